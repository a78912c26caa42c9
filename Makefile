# Two commands from a clean clone:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test weights install lint wheel bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

weights: $(STAMP)
	$(VENV)/bin/nstyle-weights fetch

# A real stylisation of the built-in images with the paper's settings.
demo: weights
	$(VENV)/bin/nstyle-stylize

test: weights
	$(PY) -m pytest -q --durations=12 tests

# ruff: lint and formatting (configured in pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check nstyle experiments tests benchmarks tools hydra_plugins
	$(VENV)/bin/ruff format --check nstyle experiments tests benchmarks tools hydra_plugins

# the built wheel, installed outside the checkout, runs every command
wheel: weights
	tools/check-wheel

bench: weights
	$(PY) benchmarks/bench_loss.py

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
