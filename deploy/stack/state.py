"""The state directory of the local stack and the PID records of its processes.

    <state>/stack.json          which services the last `up` enabled, and the port plan
    <state>/logs/<name>.log     stdout and stderr of each service (appended across restarts)
    <state>/run/<name>.pid      the PID of a running service (only while `up` considers it started)
    <state>/run/<name>.json     its record: command, ports, start time, process creation time
    <state>/<component>/        each component's own data (kafka/, postgres/, connect/, analytics/, ingest/)

A PID alone is not proof: after a crash and a reboot, or a long time, the number may belong to
another process. A record is "alive" only while a process with that PID exists, is not a zombie,
and was created at the time the record says (psutil's create_time).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Dict, List, Optional

import psutil

from deploy.stack.footprint import tree  # noqa: F401 (the process trees of the stack's services)

# psutil's create_time is derived from boot time and clock ticks: allow for rounding.
_CREATE_TIME_TOLERANCE = 1.0


@dataclasses.dataclass
class Record:
    """What `up` wrote about one started process."""

    name: str
    pid: int
    create_time: float
    argv: List[str]
    cwd: str
    ports: Dict[str, int]
    started_at: float  # wall clock, seconds since the epoch
    log: str
    oneshot: bool = False
    exit_code: Optional[int] = None  # one-shot steps: how the run ended
    finished_at: Optional[float] = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Record":
        data = json.loads(text)
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


class StateDir:
    def __init__(self, root: pathlib.Path):
        self.root = pathlib.Path(root).absolute()

    @property
    def logs(self) -> pathlib.Path:
        return self.root / "logs"

    @property
    def run(self) -> pathlib.Path:
        return self.root / "run"

    @property
    def stack_file(self) -> pathlib.Path:
        return self.root / "stack.json"

    def log(self, name: str) -> pathlib.Path:
        return self.logs / ("%s.log" % name)

    def pid_file(self, name: str) -> pathlib.Path:
        return self.run / ("%s.pid" % name)

    def record_file(self, name: str) -> pathlib.Path:
        return self.run / ("%s.json" % name)

    def ensure(self) -> None:
        for directory in (self.root, self.logs, self.run):
            directory.mkdir(parents=True, exist_ok=True)

    # -- records ---------------------------------------------------------------------------

    def write_record(self, record: Record) -> None:
        self.ensure()
        _atomic_write(self.record_file(record.name), record.to_json())
        if record.oneshot and record.exit_code is not None:
            self.pid_file(record.name).unlink(missing_ok=True)
        else:
            _atomic_write(self.pid_file(record.name), "%d\n" % record.pid)

    def read_record(self, name: str) -> Optional[Record]:
        """The record of `name`; a PID file without a readable record gives a minimal one."""
        try:
            return Record.from_json(self.record_file(name).read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            pass
        try:
            pid = int(self.pid_file(name).read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None
        return Record(name=name, pid=pid, create_time=0.0, argv=[], cwd="", ports={}, started_at=0.0,
                      log=str(self.log(name)))

    def remove_record(self, name: str) -> None:
        self.pid_file(name).unlink(missing_ok=True)
        self.record_file(name).unlink(missing_ok=True)

    def recorded_names(self) -> List[str]:
        if not self.run.is_dir():
            return []
        names = {p.stem for p in self.run.glob("*.pid")} | {p.stem for p in self.run.glob("*.json")}
        return sorted(names)

    # -- stack.json ------------------------------------------------------------------------

    def write_stack(self, enabled: List[str], ports: Dict[str, Dict[str, int]]) -> None:
        self.ensure()
        _atomic_write(self.stack_file, json.dumps(
            {"enabled": enabled, "ports": ports, "updated_at": time.time()}, indent=2, sort_keys=True) + "\n")

    def read_stack(self) -> Optional[dict]:
        try:
            return json.loads(self.stack_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None


def _atomic_write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def process_of(record: Optional[Record]) -> Optional[psutil.Process]:
    """The live process a record describes, or None (gone, a zombie, or the PID was reused)."""
    if record is None or record.pid <= 0 or (record.oneshot and record.exit_code is not None):
        return None
    try:
        proc = psutil.Process(record.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if record.create_time and abs(proc.create_time() - record.create_time) > _CREATE_TIME_TOLERANCE:
            return None  # another process got this PID
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def is_alive(record: Optional[Record]) -> bool:
    return process_of(record) is not None
