"""How much CPU other work on the machine took while a path ran: the benchmark's noise, measured.

The client, Redis and Postgres share the machine's cores; a test suite running beside the
benchmark moves its figures by tens of percent. This samples every process's CPU time and sums
what went to processes that are not the benchmark's: not this process or its descendants, not
redis-server, not a Postgres backend of an `rp_bench_*` database or a shared Postgres process
(checkpointer, WAL writer...). Kernel threads are left out. Processes that live less than one
sampling interval are missed, so the figure is a lower bound.
"""

from __future__ import annotations

import os
import re
import threading
import time

try:
    import psutil
except ImportError:  # psutil is optional (the `bench` extra): without it, no figure
    psutil = None

_BACKEND = re.compile(r"\d+\.\d+\.\d+\.\d+\(\d+\)|\[local\]|autovacuum worker")


class OtherLoad:
    """Context manager; `cores` is the average number of cores other work kept busy (None if unknown)."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.cores = interval, None
        self._first: dict[tuple, float] = {}
        self._last: dict[tuple, float] = {}
        self._kinds: dict[tuple, bool] = {}
        self._stop = threading.Event()
        self._me = os.getpid()

    def _foreign(self, proc) -> bool:
        name, cmdline = proc.info["name"] or "", proc.info["cmdline"] or []
        title = " ".join(cmdline)
        if not cmdline or name.startswith("redis-server"):
            return False  # kernel threads; Redis serves the benchmark
        if name.startswith("postgres") or title.startswith("postgres"):
            return "rp_bench_" not in title and bool(_BACKEND.search(title))
        try:
            return proc.pid != self._me and all(parent.pid != self._me for parent in proc.parents())
        except psutil.Error:
            return True

    def _sample(self, initial: bool) -> None:
        for proc in psutil.process_iter(["name", "cmdline", "cpu_times", "create_time"]):
            key = (proc.pid, proc.info["create_time"])
            if key not in self._kinds:
                self._kinds[key] = self._foreign(proc)
            times = proc.info["cpu_times"]
            if not self._kinds[key] or times is None:
                continue
            cpu = times.user + times.system
            self._first.setdefault(key, cpu if initial else 0.0)
            self._last[key] = cpu

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample(initial=False)

    def __enter__(self):
        if psutil is not None:
            self._started = time.perf_counter()
            self._sample(initial=True)
            self._thread = threading.Thread(target=self._watch, name="other-load", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if psutil is not None:
            self._stop.set()
            self._thread.join()
            self._sample(initial=False)
            busy = sum(self._last[k] - self._first[k] for k in self._last)
            self.cores = busy / max(time.perf_counter() - self._started, 1e-9)
