# talkingface — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help setup test test-fast lint format protos demo lock clean

help:
	@echo "make setup      install Debian packages and .venv (idempotent)"
	@echo "make test       run the whole test suite (installs first)"
	@echo "make test-fast  the suite without tests marked slow"
	@echo "make lint       ruff check + format check"
	@echo "make format     ruff format + autofix"
	@echo "make protos     regenerate Python code from protos/ into the package"
	@echo "make demo       the end-to-end demo (installs first)"
	@echo "make lock       re-resolve and re-pin constraints.txt"

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

protos: setup
	$(PY) scripts/gen_protos.py

demo: setup
	$(VENV)/bin/talkingface demo

lock:
	rm -rf /tmp/talkingface-lock && python3 -m venv /tmp/talkingface-lock
	/tmp/talkingface-lock/bin/pip install -q -e '.[dev]'
	/tmp/talkingface-lock/bin/pip freeze --exclude-editable | grep -v '^talkingface' > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist
