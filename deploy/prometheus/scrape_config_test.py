"""The scrape configuration follows the stack catalogue: no service with metrics is left out, no
address is stale, and the file the build generates is exactly the catalogue's default plan."""

import pathlib
import re

import pytest

from deploy.prometheus import scrape_config
from deploy.stack import catalog

GENERATED = pathlib.Path("deploy/prometheus/prometheus.yml")


def targets(text):
    """job name -> (metrics path, target) from a rendered file."""
    jobs = re.findall(r'- job_name: "([^"]+)"\n\s+metrics_path: "([^"]+)"\n\s+static_configs:\n\s+- targets: \["([^"]+)"\]',
                      text)
    return {job: (path, target) for job, path, target in jobs}


def test_every_catalogue_service_is_classified():
    names = {service.name for service in catalog.SERVICES}
    classified = set(scrape_config.ENDPOINTS) | set(scrape_config.NO_ENDPOINT)
    unclassified = names - classified
    assert not unclassified, (
        "deploy/stack/catalog.py has %s, which deploy/prometheus/scrape_config.py does not know: add each to "
        "ENDPOINTS (its metrics port and path) or to NO_ENDPOINT (why it has none)" % sorted(unclassified))
    assert not set(scrape_config.ENDPOINTS) & set(scrape_config.NO_ENDPOINT)
    assert not classified - names, "entries for services the catalogue no longer has: %s" % sorted(classified - names)


def test_every_port_named_metrics_is_scraped():
    for service in catalog.SERVICES:
        for port in service.ports:
            if "metrics" in port.name:
                assert scrape_config.ENDPOINTS.get(service.name) == scrape_config.Endpoint(port.name), service.name


def test_generated_file_matches_the_default_port_plan():
    text = GENERATED.read_text()
    assert text.startswith(scrape_config.HEADER)
    plan = catalog.port_plan({}, env={})
    found = targets(text)
    assert set(found) == set(scrape_config.ENDPOINTS) and found
    for name, endpoint in scrape_config.ENDPOINTS.items():
        assert found[name] == (endpoint.path, "127.0.0.1:%d" % plan[name][endpoint.port])
    assert found["analytics"] == ("/metrics", "127.0.0.1:8400")


def test_port_overrides_and_environment_move_the_targets(capsys):
    assert scrape_config.main(["--port", "analytics=18400", "--port", "ingest.metrics=19471"]) == 0
    found = targets(capsys.readouterr().out)
    assert found["analytics"][1] == "127.0.0.1:18400" and found["ingest"][1] == "127.0.0.1:19471"
    jobs = scrape_config.scrape_jobs(catalog.port_plan({}, env={"DP_IOT_AGGREGATOR_HTTP_PORT": "19464"}))
    assert {job["job_name"]: job["target"] for job in jobs}["aggregator"] == "127.0.0.1:19464"


def test_bad_input_is_refused_with_the_reason(capsys):
    assert scrape_config.main(["--port", "nope=1"]) == 2
    assert "no such port" in capsys.readouterr().err
    with pytest.raises(scrape_config.ConfigError, match="does not have"):
        scrape_config.scrape_jobs(catalog.port_plan({}, env={}), endpoints={"ghost": scrape_config.Endpoint("port")})
    with pytest.raises(scrape_config.ConfigError, match="has no port 'admin'"):
        scrape_config.scrape_jobs(catalog.port_plan({}, env={}), endpoints={"kafka": scrape_config.Endpoint("admin")})
