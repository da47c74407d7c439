# Set-up is part of every target: a fresh machine needs only python3 (3.10+) and pip.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[demo,test,bench,notebooks,interop]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m vi_jax.demo

test: $(STAMP)
	$(VENV)/bin/ruff check vi_jax tests benchmarks
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -n 2 --dist worksteal -q tests

bench: $(STAMP)
	$(PY) -m benchmarks.step_cost

clean:
	rm -rf $(VENV)
