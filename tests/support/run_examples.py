"""Run example scripts as ``python SCRIPT ARGS…`` would, each in a forked child of one warm interpreter.

    python tests/support/run_examples.py SPEC.json

``SPEC.json`` lists ``{"script", "args", "cwd", "stdout", "stderr"}`` objects; the results (exit code and
seconds per script) are written to ``SPEC.json.out``. The parent imports the heavy libraries once (torch,
transformers, the guard, LangChain, NeMo Guardrails, matplotlib) and runs no model code; each script then runs
in a fresh ``fork()`` of it as ``__main__`` with its own ``sys.argv``, working folder and output files — the
same process state a user's interpreter has after those imports, without paying them (about 10 s) per
script. A script that runs past ``timeout`` seconds is killed (exit code -9).
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
import time
import traceback
from pathlib import Path


def _preload() -> None:
    here = str(Path(__file__).resolve().parent)         # tests/support shadows packages (tokenizers.py)
    sys.path[:] = [entry for entry in sys.path if str(Path(entry or ".").resolve()) != here]
    import matplotlib

    matplotlib.use("Agg")
    import langchain.agents  # noqa: F401
    import langchain_core.messages  # noqa: F401
    import matplotlib.pyplot
    import nemoguardrails  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import latent_guardrail
    import latent_guardrail.distributed
    import latent_guardrail.integrations.langchain
    import latent_guardrail.integrations.nemo
    import latent_guardrail.steering  # noqa: F401


def _child(spec: dict) -> int:  # type: ignore[type-arg]
    os.chdir(spec["cwd"])
    for fd, name in ((1, "stdout"), (2, "stderr")):
        handle = os.open(spec[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    script = str(Path(spec["script"]).resolve())
    sys.argv = [script, *spec["args"]]
    sys.path[0] = str(Path(script).parent)
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
    except BaseException:  # report any failure as the interpreter would
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def main() -> int:
    spec_path = Path(sys.argv[1])
    specs = json.loads(spec_path.read_text(encoding="utf-8"))
    _preload()
    results = {}
    for spec in specs:
        sys.stdout.flush()
        sys.stderr.flush()
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(_child(spec))
        deadline = started + float(spec.get("timeout", 600))
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                break
            if time.perf_counter() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                code = -9
                break
            time.sleep(0.05)
        results[spec["script"]] = {"returncode": code, "seconds": round(time.perf_counter() - started, 2)}
    Path(f"{spec_path}.out").write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
