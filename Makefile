# The two set-up commands a fresh machine needs (README):
#   make demo   -> creates .venv, installs fedsynth, runs a 3-site simulation on the demo cohort
#                  into a new runs/demo-<date>-<time>/
#   make test   -> creates .venv, installs fedsynth + dev tools, runs ruff and the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

$(STAMP): pyproject.toml
	@echo "setting up $(VENV): fedsynth and its dependencies (torch CPU, flwr, opacus; a few minutes on a fresh machine)"
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install --progress-bar off -e '.[dev]'
	touch $(STAMP)

.PHONY: install demo test test-fast lint
install: $(STAMP)

# a new run folder each time (ehr-simulate refuses to overwrite a run): make demo DEMO_OUT=DIR
DEMO_OUT ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

demo: $(STAMP)
	$(BIN)/ehr-simulate --data demo --sites 3 --out $(DEMO_OUT)

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q --durations=10

# the fast loop: everything but the end-to-end Flower runs marked slow (2 min 23 s on 2 cores)
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow" --durations=5
