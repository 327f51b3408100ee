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

# docs/web-ui-workflow.png and docs/web-ui-timeline.png: the Web UI browser test
# (tests/ui) on a fresh upgrade of two local hosts on the demo's addresses, which
# must be free (`make down` first). docs/ is only updated if the test passes.
.PHONY: screenshots
screenshots: setup
	@$(VENV)/bin/python -c 'import socket, sys; s = socket.socket(); s.settimeout(1); \
	  sys.exit("screenshots: 127.0.1.1:2222 is in use (the demo?); make down first" \
	  if s.connect_ex(("127.0.1.1", 2222)) == 0 else 0)'
	@out=$$(mktemp -d) && \
	  ARBUP_ARTIFACTS=$$out ARBUP_TEST_NET=127.0.1 $(PYTEST) -ra tests/ui && \
	  cp $$out/web-ui-workflow.png $$out/web-ui-timeline.png docs/ && rm -rf $$out && \
	  echo "screenshots: docs/web-ui-workflow.png docs/web-ui-timeline.png"

# Re-record the replay tests' histories from real runs (after an intended change
# of the workflow's commands), then replay them.
record-histories: setup
	ARBUP_RECORD_HISTORIES=1 $(PYTEST) -ra tests/test_upgrade.py tests/test_faults.py tests/test_workers.py
	$(PYTEST) -ra tests/test_replay.py

clean: down
	rm -rf .arbup .pytest_cache
