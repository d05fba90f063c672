"""digests.json names every image with its manifest digest, in the format the cluster renderer
reads (deploy/k8s/images.py: {"<image>": "sha256:<64 hex>"}, names as in its OURS table)."""

import json
import os
import pathlib
import re

IMAGES = {"aggregator", "analytics", "behaviour_metrics", "commerce_marts", "ingest", "iot_simulator", "ws_gateway"}


def test_every_image_has_its_own_digest():
    digests = json.loads(pathlib.Path(os.environ["DIGESTS_JSON"]).read_text())
    assert set(digests) == IMAGES
    assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", d) for d in digests.values()), digests
    assert len(set(digests.values())) == len(IMAGES), "two images share a manifest digest"
    for name, digest in digests.items():
        built = pathlib.Path(os.environ["DIGESTS_JSON"]).parent / (name + ".digest")
        assert built.read_text().strip() == digest, name
