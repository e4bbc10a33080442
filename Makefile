# The two commands of the README: `make demo` and `make test`.
# Both create .venv from nothing: the CPU build of torch first (served locally,
# seconds), then the package with its dev extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# The local pipeline (jobs/demo/pipeline_demo.py): synthetic shards -> train on local Ray -> policy -> evaluate ->
# register -> promote, tracked in sqlite:///mlflow.db (artifacts ./mlruns/<experiment>, checkpoints ./runs).
demo: setup
	$(BIN)/visor demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The inner loop: the unit tests only (no Ray, no servers, no `visor` subprocesses; see tests/conftest.py).
test-fast: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not integration"

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
