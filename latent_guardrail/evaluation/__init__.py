"""Evaluation: labelled sets, guards and same-host baselines side by side, metrics, reports with plots.

Typical use::

    from latent_guardrail import LatentGuard
    from latent_guardrail.evaluation import evaluate, load_set, write_report

    guard = LatentGuard.load("default")
    sets = load_set("advbench", "harmful", "harmful_behaviors.csv") + load_set("xstest", "labels", "xstest.csv")
    result = evaluate({"tuned": guard}, sets)
    write_report(result, "report/")              # report.md, report.html, results.json, PNG plots

The command line equivalent is ``latent-guardrail eval``.
"""

from .baselines import SELF_CHECK_PROMPT, host_replies, keyword_judge_scores, perplexity_scores, self_check_scores
from .cache import ResultCache, content_key
from .registry import BASELINES, Baseline, BaselineRun, BaselineScores, get_baseline
from .report import markdown_summary, plot_all, summary_rows, write_report
from .runner import EvalData, EvalReport, EvalResult, EvalSettings, Metrics, RuleReport, SetRate, evaluate, metrics_for
from .sets import EvalSet, LeakageWarning, find_leaks, load_set, normalize_text, parse_set_spec, sets_from_records

__all__ = [
    "BASELINES",
    "SELF_CHECK_PROMPT",
    "Baseline",
    "BaselineRun",
    "BaselineScores",
    "EvalData",
    "EvalReport",
    "EvalResult",
    "EvalSet",
    "EvalSettings",
    "LeakageWarning",
    "Metrics",
    "ResultCache",
    "RuleReport",
    "SetRate",
    "content_key",
    "evaluate",
    "find_leaks",
    "get_baseline",
    "host_replies",
    "keyword_judge_scores",
    "load_set",
    "markdown_summary",
    "metrics_for",
    "normalize_text",
    "parse_set_spec",
    "perplexity_scores",
    "plot_all",
    "self_check_scores",
    "sets_from_records",
    "summary_rows",
    "write_report",
]
