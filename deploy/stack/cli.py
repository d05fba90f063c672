"""Command lines of `bazel run //deploy:up`, `:status`, `:logs` and `:down` (see README.md)."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from typing import List, Optional, Sequence

from deploy.stack import catalog, supervisor
from deploy.stack.supervisor import Stack, StackError, format_table, human_bytes, human_seconds


def _state_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=pathlib.Path, default=None,
                        help="state directory: data, logs, PID files [env DP_STATE_DIR, default <workspace>/.state]")


def _state_dir(args) -> pathlib.Path:
    if args.state_dir is None:
        return supervisor.default_state_dir()
    path = args.state_dir
    if not path.is_absolute() and os.environ.get("BUILD_WORKING_DIRECTORY"):
        path = pathlib.Path(os.environ["BUILD_WORKING_DIRECTORY"]) / path
    return path.absolute()


def _csv(values: Optional[Sequence[str]]) -> List[str]:
    out: List[str] = []
    for value in values or []:
        out += [v.strip() for v in value.split(",") if v.strip()]
    return out


def _stack(args, ports=None) -> Stack:
    return Stack(_state_dir(args), ports=ports)


# -- up ------------------------------------------------------------------------------------

def up_main(argv: Optional[Sequence[str]] = None) -> int:
    names = ", ".join(s.name for s in catalog.SERVICES)
    ports = ", ".join("%s%s=%d [%s]" % (s.name, "" if p.name == "port" else "." + p.name, p.default, p.env)
                      for s in catalog.SERVICES for p in s.ports)
    parser = argparse.ArgumentParser(
        prog="up", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Start the local stack as detached background processes, in dependency order, each "
                    "waited for until healthy. Running healthy services are left alone.",
        epilog="Services: %s.\nProfiles: %s (a service's dependencies are always added).\nPorts: %s."
               "\n\nExamples:\n  bazel run //deploy:up\n  bazel run //deploy:up -- --profile iot\n"
               "  bazel run //deploy:up -- --profile all          (adds HDFS, Spark, Superset, Airflow)\n"
               "  bazel run //deploy:up -- --only analytics        (restart one service)\n"
               "  bazel run //deploy:up -- --port kafka=19092 --without ingest" % (names, ", ".join(catalog.PROFILES), ports))
    _state_arg(parser)
    parser.add_argument("--profile", action="append", default=None,
                        help="profiles to enable, comma separated: default (iot + behaviour), commerce, all (iot + "
                             "behaviour + commerce), flink, core [env DP_STACK_PROFILE, default: default]")
    parser.add_argument("--services", action="append", default=None,
                        help="exactly these services (plus dependencies) instead of profiles [env DP_STACK_SERVICES]")
    parser.add_argument("--with", dest="with_", action="append", default=None, help="add services")
    parser.add_argument("--without", action="append", default=None, help="leave services out")
    parser.add_argument("--only", action="append", default=None,
                        help="(re)start only these services; their dependencies must be healthy and are not touched")
    parser.add_argument("--port", action="append", default=[], metavar="NAME=PORT",
                        help="override a port, e.g. kafka=19092 or ingest.metrics=19471 (repeatable)")
    args = parser.parse_args(argv)
    try:
        overrides = dict(catalog.parse_port_override(text) for text in args.port)
        plan = catalog.port_plan(overrides)
        profiles = _csv(args.profile) or _csv([os.environ.get("DP_STACK_PROFILE", "")]) or ["default"]
        chosen = _csv(args.services) or _csv([os.environ.get("DP_STACK_SERVICES", "")])
        enabled = catalog.select(profiles, chosen, _csv(args.with_), _csv(args.without))
    except catalog.CatalogError as err:
        parser.error(str(err))
    stack = Stack(_state_dir(args), ports=plan)
    began = time.monotonic()
    stack.say("state: %s" % stack.state.root)
    try:
        rows = stack.up(enabled, only=_csv(args.only))
    except (StackError, catalog.CatalogError) as err:
        print("up failed: %s" % err, file=sys.stderr)
        print("(services started so far keep running: `bazel run //deploy:status`, `bazel run //deploy:down`)",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("up interrupted; services started so far keep running (`bazel run //deploy:down` stops them)",
              file=sys.stderr)
        return 130
    table = []
    for row in rows:
        creds = row.credentials or [""]
        table.append([row.name, row.status, row.address, row.pid, creds[0]])
        table += [["", "", "", "", extra] for extra in creds[1:]]
    stack.say("")
    stack.say(format_table(["SERVICE", "STATUS", "ADDRESS", "PID", "CREDENTIALS"], table))
    stack.say("\nup in %.1f s; logs: %s  (status: bazel run //deploy:status, stop: bazel run //deploy:down)"
              % (time.monotonic() - began, stack.state.logs))
    return 0 if stack.ok(rows) else 1


# -- status --------------------------------------------------------------------------------

def status_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="status", description="Health (checked now), PIDs, ports, memory and CPU of the local stack's "
                                   "services. Exit status 1 when an enabled service is not healthy.")
    _state_arg(parser)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    stack = _stack(args)
    if not stack.state.root.exists():
        print("no stack state in %s (start it: bazel run //deploy:up)" % stack.state.root)
        return 1
    rows = stack.status()
    ok = stack.ok(rows)
    total = sum(row.rss for row in rows)
    if args.json:
        print(json.dumps({"ok": ok, "total_rss_bytes": total, "state_dir": str(stack.state.root),
                          "services": [row.__dict__ for row in rows]}, indent=2))
        return 0 if ok else 1
    enabled = set(stack.enabled())
    table = [[row.name + ("" if row.name in enabled else " (not enabled)"), row.status, row.pid, row.ports,
              human_bytes(row.rss), "-" if row.cpu is None else "%.0f%%" % row.cpu, human_seconds(row.uptime),
              row.health] for row in rows]
    print("state: %s" % stack.state.root)
    print(format_table(["SERVICE", "STATUS", "PID", "PORTS", "RSS", "CPU", "UPTIME", "HEALTH"], table))
    print("total RSS: %s" % human_bytes(total))
    for row in rows:
        if row.log_tail:
            print("\n%s %s; last %d lines of %s:" % (row.name, row.status, supervisor.CRASH_LOG_LINES,
                                                     stack.state.log(row.name)))
            print(supervisor._indent(row.log_tail))
            print("restart it alone: bazel run //deploy:up -- --only %s" % row.name)
    return 0 if ok else 1


# -- logs ----------------------------------------------------------------------------------

def logs_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="logs", description="Show the end of a service's log (its stdout and stderr).")
    _state_arg(parser)
    parser.add_argument("name", nargs="?", help="service (without it: list the logs)")
    parser.add_argument("-n", "--lines", type=int, default=50, help="lines to show [50]")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C ends)")
    args = parser.parse_args(argv)
    stack = _stack(args)
    if not args.name:
        for service in stack.services:
            path = stack.state.log(service.name)
            if path.exists():
                print("%-10s %s (%s)" % (service.name, path, human_bytes(path.stat().st_size) if path.stat().st_size
                                         >= 1024 * 1024 else "%d bytes" % path.stat().st_size))
        return 0
    if args.name not in stack.known:
        parser.error("unknown service %r (choose from %s)" % (args.name, ", ".join(stack.known)))
    path = stack.state.log(args.name)
    if not path.exists():
        print("no log for %s yet (%s)" % (args.name, path), file=sys.stderr)
        return 1
    text = supervisor.tail(path, args.lines)
    if text:
        print(text, flush=True)
    if not args.follow:
        return 0
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            while True:
                chunk = log.read()
                if chunk:
                    sys.stdout.write(chunk.decode("utf-8", errors="replace"))
                    sys.stdout.flush()
                else:
                    if path.exists() and path.stat().st_size < log.tell():
                        log.seek(0)  # truncated
                    time.sleep(0.3)
    except KeyboardInterrupt:
        return 0


# -- down ----------------------------------------------------------------------------------

def down_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="down", description="Stop the local stack (or the named services) gracefully, in reverse dependency "
                                 "order: SIGTERM, wait, SIGKILL what is left. Data stays in the state directory.")
    _state_arg(parser)
    parser.add_argument("names", nargs="*", help="services to stop [all]")
    args = parser.parse_args(argv)
    stack = _stack(args)
    for name in args.names:
        if name not in stack.known:
            parser.error("unknown service %r (choose from %s)" % (name, ", ".join(stack.known)))
    began = time.monotonic()
    stopped = stack.down(args.names)
    print("stopped %s in %.1f s (state kept in %s)" % (", ".join(stopped) or "nothing (no service was running)",
                                                       time.monotonic() - began, stack.state.root))
    return 0
