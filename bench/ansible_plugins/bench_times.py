"""Ansible callback plugin of the arbup benchmark: per host and task, when the task
started and ended on that host (wall-clock seconds), one JSON line each, to the
file named by BENCH_TIMES_FILE. It adds no command on any host."""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: bench_times
    type: aggregate
    short_description: per-host task start and end times for arbup's benchmark
    description: Writes one JSON line per host and task to $BENCH_TIMES_FILE.
    requirements: []
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._out = open(os.environ["BENCH_TIMES_FILE"], "a", encoding="utf-8")
        self._starts: dict[tuple[str, str], float] = {}

    def _write(self, **record) -> None:
        self._out.write(json.dumps(record) + "\n")
        self._out.flush()

    def v2_runner_on_start(self, host, task):
        self._starts[(host.get_name(), task._uuid)] = time.time()

    def _end(self, result, status: str) -> None:
        host = result._host.get_name()
        task = result._task
        start = self._starts.pop((host, task._uuid), None)
        self._write(host=host, task=task.get_name(), status=status, start=start,
                    end=time.time())

    def v2_runner_on_ok(self, result):
        self._end(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._end(result, "ignored" if ignore_errors else "failed")

    def v2_runner_on_skipped(self, result):
        self._end(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._end(result, "unreachable")
