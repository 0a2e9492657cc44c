# Two entry points, both idempotent: `make demo` and `make test`; `make test-fast` is the unit layer alone.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast lint clean

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/runbook demo

# Three workers on two cores: most of the suite waits on PostgreSQL, S3 and child processes; one module per worker.
test: setup
	$(PY) -m pytest -q -n 3 --dist loadfile

test-fast: setup
	$(PY) -m pytest -q tests/unit

lint: setup
	$(VENV)/bin/ruff check runbook steps tests
	$(VENV)/bin/mypy runbook steps

clean:
	rm -rf $(VENV) .pytest_cache
