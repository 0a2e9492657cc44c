# Two entry points, both idempotent: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint clean

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/runbook demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check runbook steps tests
	$(VENV)/bin/mypy runbook steps

clean:
	rm -rf $(VENV) .pytest_cache
