"""Footprint of process trees: RSS sampled (the figure `status` totals and the demo's peak) and
CPU seconds (the benchmarks).

RSS is summed over every process of each tree (launchers, JVMs, postmasters and their backends);
pages shared between processes count once per process, so the sum is an upper bound.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterable, List, Optional

import psutil


def tree(proc: psutil.Process) -> List[psutil.Process]:
    """The process and all its descendants; empty when it is gone."""
    try:
        return [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def rss(processes: Iterable[psutil.Process]) -> int:
    """Resident bytes of the processes still alive (each counted once)."""
    total, seen = 0, set()
    for proc in processes:
        if proc.pid in seen:
            continue
        seen.add(proc.pid)
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def cpu_seconds(pid: Optional[int]) -> float:
    """User + system CPU seconds of a process and its live descendants (children already reaped
    count in their parent); 0 when there is no such process."""
    if pid is None:
        return 0.0
    try:
        processes = tree(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in processes:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


class PeakSampler:
    """Samples the RSS of the trees `roots()` returns every `interval` seconds, in a daemon thread.

    `peak` is the largest total seen, `peak_processes` the number of processes at that moment.
    """

    def __init__(self, roots: Callable[[], Iterable[psutil.Process]], interval: float = 1.0):
        self.roots = roots
        self.interval = interval
        self.peak = 0
        self.peak_processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def sample(self) -> int:
        members = [member for root in self.roots() for member in tree(root)]
        total = rss(members)
        self.samples += 1
        if total > self.peak:
            self.peak, self.peak_processes = total, len(members)
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def start(self) -> "PeakSampler":
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return self.peak


def children_of_this_process() -> List[psutil.Process]:
    """Every direct child of the calling process (the demo's components and their trees)."""
    try:
        return psutil.Process().children(recursive=False)
    except psutil.Error:
        return []


def human(count: int) -> str:
    return "%.2f GiB" % (count / 2 ** 30) if count >= 2 ** 30 else "%.0f MiB" % (count / 2 ** 20)
