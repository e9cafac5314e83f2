# Two entry points (README): `make demo` runs the main job, `make test` the whole suite. Each sets up .venv itself.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
CFISAC := $(VENV)/bin/cfisac

.PHONY: demo test lint clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,entropy]"
	touch $@

demo: $(VENV)/.installed
	$(CFISAC) reproduce --preset quick

test: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest

clean:
	rm -rf $(VENV) data runs
