"""The cluster manifests against the images the build made (deploy/images).

With the digests file the image build writes (`//deploy/images:digests`), every image of ours
in every environment is `<registry>/<repository>@<that image's manifest digest>`; and the paths
the Flink and Spark resources name inside their images (the job's main file, Flink's Python
driver jar) exist in those images, whose engine versions match what the resources declare.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import re
import tarfile
from typing import Dict, Set

import pytest

from deploy.k8s import config, images, manifests

RUNFILES = pathlib.Path(__file__).absolute().parents[2]
REGISTRY = "registry.example.invalid/dp"
DIGESTS = pathlib.Path(os.environ["DIGESTS_JSON"])


def _image_tar(name: str) -> pathlib.Path:
    return DIGESTS.parent / (name + ".tar")


def _local(uri: str) -> str:
    assert uri.startswith("local:///"), uri
    return uri[len("local://"):]


def image_paths(name: str) -> Set[str]:
    """Every path of the image's file system (all layers), without the leading slash."""
    paths: Set[str] = set()
    with tarfile.open(_image_tar(name)) as outer:
        def blob(digest: str):
            return outer.extractfile("blobs/sha256/" + digest.split(":")[1])
        index = json.load(outer.extractfile("index.json"))
        manifest = json.load(blob(index["manifests"][0]["digest"]))
        for layer in manifest["layers"]:
            with gzip.open(blob(layer["digest"])) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
                paths.update(member.name.rstrip("/") for member in tar)
    return paths


@pytest.fixture(scope="module")
def digests() -> Dict[str, str]:
    return images.load_digests(DIGESTS)


def bundle(env_name: str, digests: Dict[str, str]) -> manifests.Bundle:
    resolver = images.Resolver(registry=REGISTRY, digests=digests)
    return manifests.build(config.environment(env_name), resolver, RUNFILES)


def our_references(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str) and value.startswith(REGISTRY + "/"):
                yield value
            else:
                yield from our_references(value)
    elif isinstance(node, list):
        for value in node:
            yield from our_references(value)


def test_the_digests_file_names_every_image_of_ours(digests):
    assert set(digests) == set(images.OURS)
    # (deploy/images:digests_json_test checks each entry against its image's .digest file.)
    for name in ("behaviour_metrics", "commerce_marts"):
        assert (DIGESTS.parent / (name + ".digest")).read_text().strip() == digests[name], name


@pytest.mark.parametrize("env_name", sorted(config.ENVIRONMENTS))
def test_every_image_of_ours_is_the_built_digest(env_name, digests):
    wanted = {"%s/%s@%s" % (REGISTRY, images.OURS[name], digest) for name, digest in digests.items()}
    found = set(our_references(bundle(env_name, digests).objects))
    assert found == wanted, "manifests and built images differ: %s" % sorted(found ^ wanted)
    kinds = {o["kind"]: o["spec"]["image"] for o in bundle(env_name, digests).objects
             if o["kind"] in ("FlinkDeployment", "SparkApplication")}
    assert kinds == {
        "FlinkDeployment": "%s/dp-behaviour-metrics@%s" % (REGISTRY, digests["behaviour_metrics"]),
        "SparkApplication": "%s/dp-commerce-marts@%s" % (REGISTRY, digests["commerce_marts"]),
    }


@pytest.fixture(scope="module")
def flink_image() -> Set[str]:
    return image_paths("behaviour_metrics")


@pytest.fixture(scope="module")
def spark_image() -> Set[str]:
    return image_paths("commerce_marts")


def _one(kind: str, digests) -> dict:
    (obj,) = [o for o in bundle("staging", digests).objects if o["kind"] == kind]
    return obj["spec"]


def test_the_flink_deployment_names_files_of_its_image(digests, flink_image):
    spec = _one("FlinkDeployment", digests)
    job = spec["job"]
    assert _local(job["jarURI"]).lstrip("/") in flink_image
    main = job["args"][job["args"].index("-py") + 1]
    assert main.startswith(manifests.FLINK_JOB_ROOT + "/") and main.lstrip("/") in flink_image, main
    # Flink 2.x in the image, and the operator's flinkVersion says 2.
    dist = [p for p in flink_image if re.fullmatch(r"opt/flink/lib/flink-dist-[\d.]+\.jar", p)]
    assert len(dist) == 1, dist
    assert spec["flinkVersion"] == "v2_0" and dist[0].startswith("opt/flink/lib/flink-dist-2.")
    assert "docker-entrypoint.sh" in flink_image  # the operator's kubernetes.entry.path default
    assert spec["flinkConfiguration"]["classloader.resolve-order"] == "parent-first"


def test_the_spark_application_names_files_of_its_image(digests, spark_image):
    spec = _one("SparkApplication", digests)
    assert _local(spec["mainApplicationFile"]).lstrip("/") in spark_image
    assert "opt/spark/jars/spark-core_2.13-%s.jar" % spec["sparkVersion"] in spark_image
    assert "opt/spark/jars/spark-kubernetes_2.13-%s.jar" % spec["sparkVersion"] in spark_image
    assert {"opt/entrypoint.sh", "opt/spark/bin/spark-submit"} <= spark_image
