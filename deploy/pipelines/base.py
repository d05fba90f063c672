"""What every pipeline class shares: components started in order under one state directory,
their start-up times, a stop in reverse order that keeps going past a failing component, and
(for the streaming pipelines) the analytics service that owns the ClickHouse store.
"""

from __future__ import annotations

import json
import pathlib
import time
import urllib.parse
import urllib.request
from typing import Callable, Optional, Sequence

from deploy.common.process import free_port
from deploy.common.service import ServiceProcess

ANALYTICS_BINARY = "services/analytics/analytics"


class Pipeline:
    """Base of the pipeline classes: `config.state_dir`, `say` (one line per step), `timings`."""

    # (attribute, method) of each component, in the order `stop()` ends them.
    STOP_ORDER: Sequence[tuple] = ()

    def __init__(self, config, say: Callable[[str], None] = print):
        self.config = config
        self.say = say
        self.timings: dict[str, float] = {}

    @property
    def logs_dir(self) -> pathlib.Path:
        return self.config.state_dir / "logs"

    def start(self) -> "Pipeline":
        raise NotImplementedError

    def stop(self) -> None:
        for name, method in self.STOP_ORDER:
            component = getattr(self, name, None)
            if component is not None:
                try:
                    getattr(component, method)()
                except Exception as exc:  # keep stopping the rest
                    self.say(f"{name} did not stop cleanly: {exc}")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _timed(self, name: str, start: Callable):
        began = time.monotonic()
        result = start()
        self.timings[name] = time.monotonic() - began
        return result


class StreamingPipeline(Pipeline):
    """A pipeline whose results the analytics service (chdb) stores and serves over HTTP."""

    def __init__(self, config, say: Callable[[str], None] = print):
        super().__init__(config, say)
        self.analytics: Optional[ServiceProcess] = None
        self._analytics_port = free_port()

    @property
    def bootstrap(self) -> str:
        raise NotImplementedError

    @property
    def analytics_url(self) -> str:
        return f"http://127.0.0.1:{self._analytics_port}"

    def start_analytics(self) -> ServiceProcess:
        self.analytics = ServiceProcess(
            "analytics",
            [ANALYTICS_BINARY, "--bootstrap", self.bootstrap, "--port", str(self._analytics_port),
             "--data-dir", str(self.config.state_dir / "analytics"),
             "--batch-max-ms", str(self.config.analytics_batch_max_ms)],
            self.logs_dir / "analytics.log",
            health_url=f"{self.analytics_url}/readyz",
        )
        self._timed("analytics", lambda: self.analytics.start(timeout=120))
        return self.analytics

    def query(self, path: str, **params) -> dict:
        """GET a named query of the analytics service; returns the decoded JSON body."""
        return query(self.analytics_url, path, **params)


def query(analytics_url: str, path: str, **params) -> dict:
    """GET a named query of the analytics service at `analytics_url`; the decoded JSON body."""
    url = f"{analytics_url}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())
