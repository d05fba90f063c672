"""Daily partitions of gzip'd JSON lines, published all at once into HDFS (WebHDFS) or a folder.

A day goes to `<root>/_staging/dt=YYYY-MM-DD.<run>/part-NNNNN.jsonl.gz` first; when every part is
written, the old partition (if any) is deleted, the staging folder is renamed to
`<root>/dt=YYYY-MM-DD` and `_SUCCESS` is written into it last, holding a JSON manifest (line
counts by kind, event types, parts). Readers that wait for `_SUCCESS` never see a half-written
day; a crashed run leaves only a staging folder, removed by the next run of that day. Folders
starting with `_` are ignored by Spark's and Hive's partition discovery.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pathlib
import shutil
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Protocol

from deploy.hdfs.webhdfs import WebHdfsClient
from services.shop_simulator.model import BAD_KINDS, DUPLICATE, VALID, DayGenerator

SUCCESS = "_SUCCESS"
STAGING = "_staging"
EXTRA = "extra"  # the kind of the lines of an --extra-part file


class Interrupted(RuntimeError):
    """Writing stopped on request (SIGTERM); the day was not published."""


class PartitionStore(Protocol):
    """The few file-system operations publishing needs; paths are absolute, "/"-separated."""

    def exists(self, path: str) -> bool: ...

    def list(self, path: str) -> List[str]: ...

    def mkdirs(self, path: str) -> None: ...

    def write(self, path: str, data: bytes) -> None: ...

    def read(self, path: str) -> bytes: ...

    def rename(self, source: str, destination: str) -> None: ...

    def delete(self, path: str) -> None: ...

    def describe(self, path: str) -> str: ...


class WebHdfsStore:
    """HDFS through WebHDFS (the NameNode redirects each file's data to a DataNode)."""

    def __init__(self, client: WebHdfsClient):
        self.client = client

    def exists(self, path: str) -> bool:
        return self.client.exists(path)

    def list(self, path: str) -> List[str]:
        return [entry["pathSuffix"] for entry in self.client.list(path)]

    def mkdirs(self, path: str) -> None:
        self.client.mkdirs(path)

    def write(self, path: str, data: bytes) -> None:
        self.client.create(path, data, overwrite=True)

    def read(self, path: str) -> bytes:
        return self.client.read(path)

    def rename(self, source: str, destination: str) -> None:
        self.client.rename(source, destination)

    def delete(self, path: str) -> None:
        self.client.delete(path, recursive=True)

    def describe(self, path: str) -> str:
        return self.client.base_url + path


class LocalStore:
    """The same layout under a local folder (for DuckDB, or a laptop without HDFS)."""

    def __init__(self, base: pathlib.Path):
        self.base = pathlib.Path(base)

    def _path(self, path: str) -> pathlib.Path:
        return self.base / path.lstrip("/")

    def exists(self, path: str) -> bool:
        return self._path(path).exists()

    def list(self, path: str) -> List[str]:
        return sorted(os.listdir(self._path(path)))

    def mkdirs(self, path: str) -> None:
        self._path(path).mkdir(parents=True, exist_ok=True)

    def write(self, path: str, data: bytes) -> None:
        target = self._path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def read(self, path: str) -> bytes:
        return self._path(path).read_bytes()

    def rename(self, source: str, destination: str) -> None:
        os.rename(self._path(source), self._path(destination))

    def delete(self, path: str) -> None:
        target = self._path(path)
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()

    def describe(self, path: str) -> str:
        return str(self._path(path))


def partition_path(root: str, day) -> str:
    return "%s/dt=%s" % (root.rstrip("/"), day.isoformat())


def part_name(number: int) -> str:
    return "part-%05d.jsonl.gz" % number


def gzip_bytes(data: bytes, level: int) -> bytes:
    """`data` gzip'd with a zero timestamp: the same bytes give the same file."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=buffer, mode="wb", compresslevel=level, mtime=0) as stream:
        stream.write(data)
    return buffer.getvalue()


def gzip_lines(lines: List[bytes], level: int) -> bytes:
    """The lines, newline-terminated, gzip'd with a zero timestamp: the same lines give the same bytes."""
    return gzip_bytes(b"\n".join(lines) + b"\n", level)


@dataclass
class Part:
    """One part file: its gzip'd bytes and what went into it."""

    data: bytes
    lines: int
    counts: Dict[str, int]
    event_types: Dict[str, int]


def render_part(generator: DayGenerator, block: int, refunds: List[dict], level: int,
                should_stop: Callable[[], bool] = lambda: False) -> Part:
    """Generate one block of a day and gzip it (zero timestamp: the same block gives the same bytes).

    `generator` should be fresh (its tallies become the part's). Checks `should_stop` every
    10,000 lines and raises Interrupted.
    """
    buffer = io.BytesIO()
    count = 0
    with gzip.GzipFile(filename="", fileobj=buffer, mode="wb", compresslevel=level, mtime=0) as stream:
        chunk: List[bytes] = []
        for line in generator.block_lines(block, refunds):
            chunk.append(line.data)
            count += 1
            if len(chunk) == 10_000:
                stream.write(b"\n".join(chunk) + b"\n")
                chunk.clear()
                if should_stop():
                    raise Interrupted("stopped while generating dt=%s; the partition was not published" % generator.day)
        if chunk:
            stream.write(b"\n".join(chunk) + b"\n")
    return Part(buffer.getvalue(), count, dict(generator.counts), dict(generator.event_types))


class DayPublisher:
    """Writes one day's parts into staging, then swaps the partition in and marks it."""

    def __init__(self, store: PartitionStore, root: str, progress: Optional[Callable[[str], None]] = None,
                 should_stop: Callable[[], bool] = lambda: False):
        self.store = store
        self.root = root.rstrip("/")
        self.progress = progress or (lambda message: None)
        self.should_stop = should_stop

    def _clean_stale_staging(self, day) -> None:
        staging_root = "%s/%s" % (self.root, STAGING)
        if not self.store.exists(staging_root):
            return
        prefix = "dt=%s." % day.isoformat()
        for name in self.store.list(staging_root):
            if name.startswith(prefix):
                path = "%s/%s" % (staging_root, name)
                self.store.delete(path)
                self.progress("event=stale_staging_removed dt=%s path=%s" % (day, self.store.describe(path)))

    def publish(self, day, parts: Iterable[Part], settings: Dict[str, object]) -> dict:
        """Write every part, publish the partition, return the manifest written into _SUCCESS.

        Raises Interrupted when `should_stop()` turns true between parts (nothing published).
        """
        began = time.monotonic()
        self._clean_stale_staging(day)
        staging = "%s/%s/dt=%s.%s" % (self.root, STAGING, day.isoformat(), uuid.uuid4().hex[:12])
        self.store.mkdirs(staging)
        written: List[dict] = []
        counts: Dict[str, int] = {}
        event_types: Dict[str, int] = {}
        for part in parts:
            if self.should_stop():
                raise Interrupted("stopped while writing dt=%s after %d parts; the partition was not published "
                                  "(staging %s is removed by the next run)" % (day, len(written),
                                                                              self.store.describe(staging)))
            name = part_name(len(written))
            self.store.write("%s/%s" % (staging, name), part.data)
            written.append({"name": name, "lines": part.lines, "bytes": len(part.data)})
            for kind, count in part.counts.items():
                counts[kind] = counts.get(kind, 0) + count
            for kind, count in part.event_types.items():
                event_types[kind] = event_types.get(kind, 0) + count
            lines = sum(entry["lines"] for entry in written)
            elapsed = time.monotonic() - began
            self.progress("event=part_written dt=%s part=%s lines=%d bytes=%d day_lines=%d rate=%.0f/s"
                          % (day, name, part.lines, len(part.data), lines, lines / max(elapsed, 1e-9)))

        partition = partition_path(self.root, day)
        manifest = {
            "dt": day.isoformat(),
            "lines": sum(entry["lines"] for entry in written),
            "valid_events": counts.get(VALID, 0),
            "duplicates": counts.get(DUPLICATE, 0),
            "bad_lines": {kind: counts.get(kind, 0) for kind in BAD_KINDS},
            "extra_lines": counts.get(EXTRA, 0),
            "event_types": dict(sorted(event_types.items())),
            "parts": written,
            "settings": settings,
        }
        self.store.delete(partition)
        self.store.rename(staging, partition)
        self.store.write("%s/%s" % (partition, SUCCESS), (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
        manifest["seconds"] = round(time.monotonic() - began, 3)
        return manifest
