"""How manifests refer to images: our own by the digest the image build recorded, others by a pinned tag.

The image build (`//deploy/images`, issue 7 part 1) writes a digests file; until it exists, or
without `--digests`, references fall back to `<registry>/<image>:<tag>` and the renderer says so
loudly: a tag can move, a digest cannot. Accepted digests files (JSON):

    {"ingest": "sha256:<64 hex>", ...}
    {"images": {"ingest": {"digest": "sha256:<64 hex>"}, ...}}
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Dict, List, Mapping, Optional

# Our images: the name used in the digests file -> repository name under the environment's registry.
OURS: Mapping[str, str] = {
    "ingest": "dp-ingest",
    "ws_gateway": "dp-ws-gateway",
    "analytics": "dp-analytics",
    "iot_simulator": "dp-iot-simulator",
    "aggregator": "dp-iot-aggregator",
    "behaviour_metrics": "dp-behaviour-metrics",
    "commerce_marts": "dp-commerce-marts",
}

# Third-party images, pinned to a release (never a floating tag).
THIRD_PARTY: Mapping[str, str] = {
    "clickhouse": "clickhouse/clickhouse-server:26.9",
    "hadoop": "apache/hadoop:3.5.0",  # the Hadoop release of the local stack (ADR 0012)
    "postgres": "ghcr.io/cloudnative-pg/postgresql:18.1",
    "airflow": "apache/airflow:3.3.2-python3.11",
    "superset": "apachesuperset.docker.scarf.sh/apache/superset:6.1.0",
}

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class ImageError(ValueError):
    pass


def load_digests(path: pathlib.Path) -> Dict[str, str]:
    """{image name: sha256 digest} from a digests file; every entry checked."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ImageError("cannot read digests file %s: %s" % (path, err)) from None
    if isinstance(data, dict) and isinstance(data.get("images"), dict):
        data = data["images"]
    if not isinstance(data, dict):
        raise ImageError("digests file %s: want a JSON object of image name -> digest" % path)
    digests = {}
    for name, value in data.items():
        digest = value.get("digest") if isinstance(value, dict) else value
        if not isinstance(digest, str) or not DIGEST.match(digest):
            raise ImageError("digests file %s: %s has %r, want sha256:<64 hex digits>" % (path, name, digest))
        digests[name] = digest
    return digests


@dataclasses.dataclass
class Resolver:
    registry: str
    digests: Optional[Mapping[str, str]]
    tag: str = "dev"
    warnings: List[str] = dataclasses.field(default_factory=list)

    def ours(self, name: str) -> str:
        if name not in OURS:
            raise ImageError("unknown image %r (ours: %s)" % (name, ", ".join(OURS)))
        repository = "%s/%s" % (self.registry.rstrip("/"), OURS[name])
        if self.digests is not None:
            if name not in self.digests:
                raise ImageError("the digests file has no entry for image %r (has: %s); rebuild the images"
                                 % (name, ", ".join(sorted(self.digests)) or "none"))
            return "%s@%s" % (repository, self.digests[name])
        warning = ("image %s referenced by the tag %r, not by digest: pass --digests FILE (written by the image "
                   "build) before applying to a shared cluster" % (repository, self.tag))
        if warning not in self.warnings:
            self.warnings.append(warning)
        return "%s:%s" % (repository, self.tag)

    @staticmethod
    def third_party(name: str) -> str:
        return THIRD_PARTY[name]


def is_pinned_third_party(reference: str) -> bool:
    return reference in THIRD_PARTY.values()
