# arbup: `make demo` runs an upgrade end to end on this machine, `make test` tests it.
VENV ?= .venv
ARBUP := $(VENV)/bin/arbup
PYTEST := $(VENV)/bin/python -m pytest
TARGET := 4.3.4.0-200000022024070119

.PHONY: setup demo up down test test-unit record-histories bench clean

setup:
	@bash scripts/bootstrap.sh

up: setup
	$(ARBUP) local up

demo: up
	$(ARBUP) upgrade 1 --full-version $(TARGET) --os el7 --watch
	$(ARBUP) local hosts --expect $(TARGET) --api-hint
	@echo "The stack is still running for you to explore; 'make down' stops it."

down:
	@if [ -x $(ARBUP) ]; then $(ARBUP) local down; fi

test: setup
	$(PYTEST) -ra

test-unit: setup
	$(PYTEST) -ra -m "not integration"

# Benchmarks against Ansible, pyinfra and a bare asyncssh floor (docs/benchmarks.md);
# not part of `make test`. BENCH_QUICK=1 for a short run.
bench: setup
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(VENV)/bin/python -m bench

record-histories: setup
	ARBUP_RECORD_HISTORIES=1 $(PYTEST) -ra tests/test_replay.py -k record

clean: down
	rm -rf .arbup .pytest_cache
