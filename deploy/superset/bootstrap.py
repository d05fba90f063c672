"""Superset's metadata from code, in one process: the steps `server.py` runs before serving.

    python -m deploy.superset.bootstrap --bundle dashboards.zip --report bootstrap.json ...

Runs Superset's own CLI commands inside one application object, so Superset is imported and
configured once instead of once per command (the import is the command behind the assets
import API, see `import_assets`):

    superset db upgrade                      every start (a no-op when the schema is current)
    superset init                            when this Superset version has not run it yet here
    superset fab create-admin                when the admin does not exist, else reset-password
    assets import of BUNDLE                  every start (overwrites by UUID: no duplicates)
    superset set-database-uri -d NAME -u URI every start (an import keeps existing credentials)

Secrets come from the environment (DP_SUPERSET_ADMIN_PASSWORD, DP_SUPERSET_DATABASE_URI), so
they never show in a process list. One progress line per step goes to stdout; a JSON report
(steps and seconds, dashboards found) is written to --report. Exit 1 with the command's output
when a step fails.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import sys
import time
from typing import Dict, List, Optional, Sequence


class StepFailed(RuntimeError):
    pass


def _run(runner, cli, name: str, args: List[str], steps: Dict[str, float]) -> str:
    print("superset bootstrap: %s ..." % name, flush=True)
    started = time.monotonic()
    result = runner.invoke(cli, args, catch_exceptions=True)
    seconds = time.monotonic() - started
    output = result.output or ""
    sys.stderr.write(output)
    failed = result.exit_code != 0 or (result.exception is not None and not isinstance(result.exception, SystemExit))
    if failed:
        detail = output.strip().splitlines()[-15:]
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            import traceback

            detail += traceback.format_exception(type(result.exception), result.exception,
                                                 result.exception.__traceback__)[-5:]
        raise StepFailed("superset %s failed (exit %s):\n%s" % (" ".join(args[:2]), result.exit_code, "\n".join(detail)))
    steps[name] = round(seconds, 2)
    print("superset bootstrap: %s done in %.1f s" % (name, seconds), flush=True)
    return output


def bootstrap(args: argparse.Namespace) -> Dict:
    admin_password = os.environ.get("DP_SUPERSET_ADMIN_PASSWORD", "")
    database_uri = os.environ.get("DP_SUPERSET_DATABASE_URI", "")
    if not admin_password or not database_uri:
        raise StepFailed("DP_SUPERSET_ADMIN_PASSWORD and DP_SUPERSET_DATABASE_URI must be set (the launcher sets them)")
    report_path = pathlib.Path(args.report)
    previous = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else {}
    version = importlib.metadata.version("apache-superset")

    steps: Dict[str, float] = {}
    started = time.monotonic()
    print("superset bootstrap: loading Superset %s ..." % version, flush=True)
    from superset.app import create_app

    app = create_app()
    from superset.cli.main import superset as cli

    runner = app.test_cli_runner(mix_stderr=False) if _accepts_mix_stderr(app) else app.test_cli_runner()
    steps["load"] = round(time.monotonic() - started, 2)

    _run(runner, cli, "db upgrade", ["db", "upgrade"], steps)
    if previous.get("initialized_version") != version:
        _run(runner, cli, "init", ["init"], steps)
    with app.app_context():
        from superset.extensions import security_manager

        admin_exists = security_manager.find_user(username=args.admin_username) is not None
    if admin_exists:
        _run(runner, cli, "admin password", ["fab", "reset-password", "--username", args.admin_username,
                                             "--password", admin_password], steps)
    else:
        _run(runner, cli, "create admin", ["fab", "create-admin", "--username", args.admin_username,
                                           "--firstname", "Superset", "--lastname", "Admin",
                                           "--email", args.admin_email, "--password", admin_password], steps)
    import_assets(app, args.bundle, args.admin_username, database_uri, steps)
    _run(runner, cli, "database uri", ["set-database-uri", "--database_name", args.database_name,
                                       "--uri", database_uri], steps)

    with app.app_context():
        from superset import db
        from superset.models.dashboard import Dashboard

        found = {d.slug: d.id for d in db.session.query(Dashboard).all() if d.slug}
    missing = [slug for slug in args.expect_dashboard if slug not in found]
    if missing:
        raise StepFailed("the import did not create dashboard(s) %s (found: %s)" % (", ".join(missing), sorted(found)))
    report = {
        "superset_version": version,
        "initialized_version": version,
        "steps": steps,
        "dashboards": found,
        "seconds": round(time.monotonic() - started, 2),
    }
    report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _without_password(uri: str) -> str:
    from sqlalchemy.engine.url import make_url

    url = make_url(uri)
    return str(url.set(password=None)) if hasattr(url, "set") else str(url).replace(":%s@" % url.password, "@")


def import_assets(app, bundle: str, username: str, database_uri: str, steps: Dict[str, float]) -> None:
    """Imports the whole bundle, overwriting by UUID: databases, datasets, charts, dashboards.

    `superset import-dashboards` overwrites only the dashboards (charts and datasets that exist
    are kept as they are), so an edited chart would never reach an existing instance. This is
    the command behind `POST /api/v1/assets/import/`, which overwrites everything. The
    connection's URI is replaced by the configured one without its password (the password is
    set, encrypted, by `set-database-uri` right after).
    """
    import zipfile

    import yaml
    from flask import g

    print("superset bootstrap: import assets ...", flush=True)
    started = time.monotonic()
    with app.app_context():
        from superset.commands.exceptions import CommandInvalidError
        from superset.commands.importers.v1.assets import ImportAssetsCommand
        from superset.commands.importers.v1.utils import get_contents_from_bundle
        from superset.extensions import security_manager

        g.user = security_manager.find_user(username=username)
        with zipfile.ZipFile(bundle) as archive:
            contents = get_contents_from_bundle(archive)
        for name in list(contents):
            if name.startswith("databases/"):
                config = yaml.safe_load(contents[name])
                config["sqlalchemy_uri"] = _without_password(database_uri)
                contents[name] = yaml.safe_dump(config, sort_keys=False)
        try:
            ImportAssetsCommand(contents).run()
        except CommandInvalidError as err:
            raise StepFailed("the dashboard bundle %s is invalid: %s" % (bundle, err.normalized_messages())) from err
        except Exception as err:  # noqa: BLE001 - reported with its type; the log has the traceback
            raise StepFailed("importing %s failed: %s: %s" % (bundle, type(err).__name__, err)) from err
    seconds = time.monotonic() - started
    steps["import assets"] = round(seconds, 2)
    print("superset bootstrap: import assets done in %.1f s" % seconds, flush=True)


def _accepts_mix_stderr(app) -> bool:
    import inspect

    from click.testing import CliRunner

    return "mix_stderr" in inspect.signature(CliRunner.__init__).parameters


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="dashboard import zip")
    parser.add_argument("--admin-username", required=True)
    parser.add_argument("--admin-email", required=True)
    parser.add_argument("--database-name", required=True, help="name of the connection the bundle defines")
    parser.add_argument("--report", required=True, help="JSON report to write (also read: what ran before)")
    parser.add_argument("--expect-dashboard", action="append", default=[], metavar="SLUG",
                        help="fail unless a dashboard with this slug exists after the import")
    args = parser.parse_args(argv)
    try:
        report = bootstrap(args)
    except StepFailed as err:
        print("superset bootstrap failed: %s" % err, file=sys.stderr, flush=True)
        print("superset bootstrap: FAILED (see the bootstrap log)", flush=True)
        return 1
    print("superset bootstrap: done in %.1f s, dashboards: %s" % (report["seconds"], ", ".join(sorted(report["dashboards"]))),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
