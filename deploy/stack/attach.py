"""The running local stack as a client sees it: which services are up and healthy, and their addresses.

`find(state_dir)` reads the state `up` left (stack.json, PID records) and runs each live service's
own health check (health.py, the same `status` runs); it returns a `RunningStack` or, when nothing
of the stack runs there, None and why. It starts and stops nothing. The demo attaches to the
stack through it (`bazel run //deploy:demo -- --stack attach`).
"""

from __future__ import annotations

import dataclasses
import io
import pathlib
from typing import Dict, List, Optional, Sequence, Tuple

import psutil

from deploy.stack import catalog
from deploy.stack.catalog import APP_ROLE, HOST, Context
from deploy.stack.state import process_of
from deploy.stack.supervisor import Stack

UP_COMMAND = "bazel run //deploy:up"


@dataclasses.dataclass
class RunningStack:
    """A stack `up` started in `state_dir`: its port plan, live services and their health."""

    state_dir: pathlib.Path
    context: Context
    enabled: List[str]
    healthy: Dict[str, str]  # service -> health detail, for the services whose check passes now
    unhealthy: Dict[str, str]  # enabled services that do not run or fail their check -> why
    pids: Dict[str, int]  # long-running services -> PID of their launcher

    def has(self, names: Sequence[str]) -> bool:
        return all(name in self.healthy for name in names)

    def missing(self, names: Sequence[str]) -> List[str]:
        return [name for name in names if name not in self.healthy]

    def processes(self) -> List[psutil.Process]:
        """The launchers of the live services (their trees hold the JVMs, postmaster, ...)."""
        out = []
        for pid in self.pids.values():
            try:
                out.append(psutil.Process(pid))
            except psutil.Error:
                pass
        return out

    # --- addresses, from the port plan the services were started with -----------------------

    @property
    def bootstrap(self) -> str:
        return self.context.bootstrap

    @property
    def app_dsn(self) -> str:
        return self.context.postgres_dsn(APP_ROLE)

    @property
    def analytics_url(self) -> str:
        return self.context.url("analytics")

    @property
    def websocket_url(self) -> str:
        return "ws://%s:%d/ws" % (HOST, self.context.port("ws_gateway"))

    @property
    def gateway_url(self) -> str:
        return self.context.url("ws_gateway")

    @property
    def webhdfs_url(self) -> str:
        return self.context.webhdfs_url

    @property
    def hdfs_url(self) -> str:
        return self.context.hdfs_url

    @property
    def spark_remote(self) -> str:
        return self.context.spark_remote

    def url(self, service: str, path: str = "") -> str:
        return self.context.url(service, path)

    def superset_login(self) -> Tuple[str, str]:
        return "admin", catalog.superset_admin_password(self.context)

    def airflow_login(self) -> Tuple[str, str]:
        return "admin", catalog.airflow_admin_password(self.context)


def find(state_dir: pathlib.Path) -> Tuple[Optional[RunningStack], str]:
    """(the stack running in `state_dir`, "") or (None, why there is none). Fast when nothing runs:
    no health check is made before a live PID is found."""
    stack = Stack(state_dir, out=io.StringIO())
    if stack.state.read_stack() is None:
        return None, "no stack was started in %s" % state_dir
    live = {}
    for name in stack.names_to_show():
        service = stack.known[name]
        if not service.oneshot:
            proc = process_of(stack.record(name))
            if proc is not None:
                live[name] = proc.pid
    if not live:
        return None, "no service of the stack in %s is running" % state_dir
    ctx = stack.context()
    enabled = stack.enabled()
    healthy, unhealthy = {}, {}
    for name in stack.names_to_show():
        service = stack.known[name]
        if not service.oneshot and name not in live:
            unhealthy[name] = "not running"
            continue
        ok, detail = stack.healthy(service, ctx)
        (healthy if ok else unhealthy)[name] = detail
    return RunningStack(state_dir=stack.state.root, context=ctx, enabled=enabled, healthy=healthy,
                        unhealthy={n: why for n, why in unhealthy.items() if n in enabled}, pids=live), ""
