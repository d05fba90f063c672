"""Superset configuration for the local stack, read through SUPERSET_CONFIG_PATH.

Every value that differs between machines comes from the environment, which the launcher
(deploy/superset/server.py) sets before it starts a Superset process; nothing secret is
written here. Superset imports this file as a module and copies its UPPER_CASE names.
"""

import os


def _required(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise RuntimeError(
            "%s is not set: start Superset through `bazel run //deploy/superset:server`, which sets it" % name
        )
    return value


# Signs session cookies and encrypts the stored database passwords: the launcher reads it from
# DP_SUPERSET_SECRET_KEY or generates one into the state directory on the first start.
SECRET_KEY = _required("DP_SUPERSET_SECRET_KEY")

# Superset's own metadata (users, dashboards, charts): SQLite in the state directory.
SQLALCHEMY_DATABASE_URI = _required("DP_SUPERSET_METADATA_URI")
SQLALCHEMY_TRACK_MODIFICATIONS = False

# Files Superset keeps for itself (uploads, logs of the CLI) stay in the state directory.
DATA_DIR = _required("SUPERSET_HOME")

# One local user base, no self-registration; the launcher creates the admin.
AUTH_USER_REGISTRATION = False

# The dashboards are loaded from code: examples would only add noise and start-up time.
SUPERSET_LOAD_EXAMPLES = False

# Loopback only: no background refreshes, no thumbnails, no Celery workers.
FEATURE_FLAGS = {
    "THUMBNAILS": False,
    "ALERT_REPORTS": False,
}

# Login attempts are rate limited in memory (one process); say so explicitly instead of
# letting the limiter warn about its default on every start.
RATELIMIT_STORAGE_URI = "memory://"

# Queries of the marts are small; keep the web worker responsive on a 2-core machine.
SQLLAB_TIMEOUT = 60
SUPERSET_WEBSERVER_TIMEOUT = 120
ROW_LIMIT = 10000

LOG_LEVEL = os.environ.get("DP_SUPERSET_LOG_LEVEL", "INFO")

# Chart results are cached in files in the state directory, so every gunicorn worker shares
# them. The commerce DAG's last task (jobs/commerce/dags/superset.py) invalidates the cache of
# every dataset on schema `mart` and re-warms every chart on them after a day is published:
#  - invalidation (POST /api/v1/cachekey/invalidate) finds the keys through the metadata
#    table `cache_keys`, filled only with STORE_CACHE_KEYS_IN_METADATA_DB, and deletes them
#    through CACHE_CONFIG's backend, while chart results live in DATA_CACHE_CONFIG's: both
#    point at the same directory with the same prefix, so a key deleted is a result gone.
# DP_SUPERSET_CACHE_SECONDS=0 (`--cache-seconds 0`) keeps Superset's default: no cache.
CACHE_DEFAULT_TIMEOUT = int(os.environ.get("DP_SUPERSET_CACHE_SECONDS", "3600"))
if CACHE_DEFAULT_TIMEOUT > 0:
    _FILE_CACHE = {
        "CACHE_TYPE": "FileSystemCache",
        "CACHE_DIR": os.path.join(DATA_DIR, "cache"),
        "CACHE_KEY_PREFIX": "dp_",
        "CACHE_DEFAULT_TIMEOUT": CACHE_DEFAULT_TIMEOUT,
        "CACHE_THRESHOLD": 5000,
    }
    CACHE_CONFIG = dict(_FILE_CACHE)
    DATA_CACHE_CONFIG = dict(_FILE_CACHE)
    STORE_CACHE_KEYS_IN_METADATA_DB = True
