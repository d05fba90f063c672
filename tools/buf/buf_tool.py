"""Running the buf CLI from Bazel targets, and comparing buf images.

The buf binary comes from the external repository @buf (third_party/npm/buf). Tests get its
path in the BUF_BINARY environment variable, `bazel run` targets as a `--buf` flag; both are
runfiles-relative and are resolved here to absolute paths before anything changes directory.

Baseline images are buf's JSON image format (a FileDescriptorSet in protobuf JSON) without
source info, pretty-printed by `format_image` so that a schema change shows as a readable diff.
"""

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

# Where the baseline lives, relative to the workspace root, and the module it describes.
MODULE_DIR = "proto"
BASELINE_PATH = "proto/baseline/contracts.json"
UPDATE_COMMAND = "bazel run //proto:baseline.update"


def buf_binary(path: Optional[str] = None) -> Path:
    """The buf executable: `path`, else $BUF_BINARY, made absolute."""
    path = path or os.environ.get("BUF_BINARY")
    if not path:
        raise RuntimeError("BUF_BINARY is not set; give the target data = ['@buf//:buf'] and "
                           "env = {'BUF_BINARY': '$(rootpath @buf//:buf)'}")
    resolved = Path(path).resolve()
    if not resolved.is_file():
        raise RuntimeError(f"buf binary {path} does not exist (resolved to {resolved})")
    return resolved


def run_buf(args: Sequence[str], buf: Optional[Path] = None,
            cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """Runs `buf <args>` and returns the completed process (never raises on exit status).

    buf keeps a cache under $HOME by default; a test's HOME may be unwritable, so the cache
    goes to a temporary directory unless BUF_CACHE_DIR is already set.
    """
    env = dict(os.environ)
    env.setdefault("BUF_CACHE_DIR", os.path.join(os.environ.get("TEST_TMPDIR", tempfile.gettempdir()), "buf-cache"))
    return subprocess.run([str(buf or buf_binary()), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False)


def breaking(module_dir: Path, against: Path, buf: Optional[Path] = None) -> List[dict]:
    """Runs `buf breaking module_dir --against against`; returns buf's findings.

    Each finding is buf's JSON error: `path`, `start_line`, `start_column`, `type` (the rule
    id, for example FIELD_NO_DELETE) and `message`. Raises if buf fails for another reason.
    """
    proc = run_buf(["breaking", str(module_dir), "--against", str(against),
                    "--error-format", "json"], buf)
    findings = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode not in (0, 100) or (proc.returncode == 100) != bool(findings):
        raise RuntimeError(f"buf breaking {module_dir} --against {against} failed "
                           f"(exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return findings


def format_findings(findings: Sequence[dict]) -> str:
    """One line per finding: `path:line:column: RULE_ID: message`."""
    return "\n".join(
        f"{f.get('path', '?')}:{f.get('start_line', 0)}:{f.get('start_column', 0)}: "
        f"{f.get('type', '?')}: {f.get('message', '')}" for f in findings)


def build_image(module_dir: Path, out: Path, buf: Optional[Path] = None) -> None:
    """Builds `module_dir` into a JSON image at `out` (imports included, source info not)."""
    proc = run_buf(["build", str(module_dir), "--exclude-source-info", "-o", str(out)], buf)
    if proc.returncode != 0:
        raise RuntimeError(f"buf build {module_dir} failed (exit {proc.returncode}):\n"
                           f"{proc.stdout}{proc.stderr}")


def format_image(text: str) -> str:
    """A JSON image in the committed layout: two-space indent, key order as buf wrote it."""
    return json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"


def image_files(text: str) -> Dict[str, dict]:
    """The file descriptors of a JSON image by file name, without source code info."""
    files = {}
    for descriptor in json.loads(text).get("file", []):
        descriptor = dict(descriptor)
        descriptor.pop("sourceCodeInfo", None)
        files[descriptor["name"]] = descriptor
    return files


def image_differences(baseline: str, fresh: str) -> List[str]:
    """Human-readable differences between two JSON images, file by file; empty if equal."""
    old, new = image_files(baseline), image_files(fresh)
    differences = []
    for name in sorted(new.keys() - old.keys()):
        differences.append(f"added: {name}")
    for name in sorted(old.keys() - new.keys()):
        differences.append(f"removed: {name}")
    for name in sorted(old.keys() & new.keys()):
        if old[name] != new[name]:
            differences.append(f"changed: {name}")
    return differences
