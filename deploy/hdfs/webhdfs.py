"""A small WebHDFS REST client on the standard library: what tests and the shop simulator need.

    client = WebHdfsClient("http://127.0.0.1:9870/webhdfs/v1", user="etl")
    client.create("/raw/x.txt", b"hello")          # NameNode answers 307 -> DataNode stores it
    client.read("/raw/x.txt")                        # b"hello"

Operations follow the WebHDFS REST API: CREATE and OPEN are two-step (the NameNode redirects to
a DataNode); MKDIRS, RENAME, DELETE, GETFILESTATUS and LISTSTATUS are answered by the NameNode.
Errors carry the server's RemoteException (type and message) and the operation and path.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from typing import Dict, List, Optional, Tuple


class WebHdfsError(RuntimeError):
    """A WebHDFS call failed; `status` is the HTTP status, `exception` the Java exception name."""

    def __init__(self, message: str, status: int = 0, exception: str = ""):
        super().__init__(message)
        self.status = status
        self.exception = exception


class WebHdfsClient:
    """WebHDFS calls against one NameNode. `base_url` is its REST root, `http://host:port/webhdfs/v1`."""

    def __init__(self, base_url: str, user: str = "", timeout: float = 60.0, retries: int = 3):
        parsed = urllib.parse.urlsplit(base_url.rstrip("/"))
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError("WebHDFS URL must look like http://host:port/webhdfs/v1, got %r" % base_url)
        self.base_url = base_url.rstrip("/")
        self._host = parsed.hostname
        self._port = parsed.port or 80
        self._prefix = parsed.path if parsed.path else "/webhdfs/v1"
        self.user = user
        self.timeout = timeout
        self.retries = retries

    # -- plumbing -----------------------------------------------------------------------------

    def _url_path(self, path: str, op: str, params: Optional[Dict[str, str]] = None) -> str:
        if not path.startswith("/"):
            raise ValueError("HDFS paths must be absolute, got %r" % path)
        query = {"op": op}
        if self.user:
            query["user.name"] = self.user
        query.update(params or {})
        return "%s%s?%s" % (self._prefix, urllib.parse.quote(path), urllib.parse.urlencode(query))

    def _request(self, method: str, host: str, port: int, url_path: str, body: Optional[bytes] = None,
                 headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], bytes]:
        """One HTTP exchange; connection errors are retried (the daemon may be restarting)."""
        last: Optional[OSError] = None
        for attempt in range(self.retries):
            connection = http.client.HTTPConnection(host, port, timeout=self.timeout)
            try:
                connection.request(method, url_path, body=body, headers=headers or {})
                response = connection.getresponse()
                payload = response.read()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, payload
            except (ConnectionError, http.client.RemoteDisconnected, TimeoutError) as err:
                last = err
                time.sleep(0.5 * (attempt + 1))
            finally:
                connection.close()
        raise WebHdfsError("WebHDFS %s http://%s:%d%s failed: %s" % (method, host, port, url_path, last))

    @staticmethod
    def _error(op: str, path: str, status: int, payload: bytes) -> WebHdfsError:
        exception, message = "", payload.decode("utf-8", errors="replace").strip()
        try:
            remote = json.loads(payload)["RemoteException"]
            exception, message = remote.get("exception", ""), remote.get("message", message)
        except (ValueError, KeyError, TypeError):
            pass
        return WebHdfsError("WebHDFS %s %s: HTTP %d %s: %s" % (op, path, status, exception, message[:500]),
                            status, exception)

    def _namenode(self, method: str, op: str, path: str, params: Optional[Dict[str, str]] = None,
                  body: Optional[bytes] = None) -> Tuple[int, Dict[str, str], bytes]:
        return self._request(method, self._host, self._port, self._url_path(path, op, params), body)

    def _json(self, method: str, op: str, path: str, params: Optional[Dict[str, str]] = None) -> dict:
        status, _, payload = self._namenode(method, op, path, params)
        if status != 200:
            raise self._error(op, path, status, payload)
        return json.loads(payload) if payload else {}

    def _follow(self, method: str, op: str, path: str, location: str, body: Optional[bytes],
                expect: int) -> bytes:
        target = urllib.parse.urlsplit(location)
        url_path = target.path + ("?" + target.query if target.query else "")
        headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
        status, _, payload = self._request(method, target.hostname or self._host, target.port or 80, url_path,
                                           body=body, headers=headers)
        if status != expect:
            raise self._error(op, path, status, payload)
        return payload

    # -- operations ---------------------------------------------------------------------------

    def status(self, path: str) -> Optional[dict]:
        """The FileStatus of `path` (type, length, modificationTime, ...), or None if it does not exist."""
        status, _, payload = self._namenode("GET", "GETFILESTATUS", path)
        if status == 404:
            return None
        if status != 200:
            raise self._error("GETFILESTATUS", path, status, payload)
        return json.loads(payload)["FileStatus"]

    def exists(self, path: str) -> bool:
        return self.status(path) is not None

    def list(self, path: str) -> List[dict]:
        """The FileStatus of each entry of a directory (`pathSuffix` is the name), sorted by name."""
        entries = self._json("GET", "LISTSTATUS", path)["FileStatuses"]["FileStatus"]
        return sorted(entries, key=lambda entry: entry["pathSuffix"])

    def mkdirs(self, path: str) -> None:
        if not self._json("PUT", "MKDIRS", path).get("boolean", False):
            raise WebHdfsError("WebHDFS MKDIRS %s: the NameNode answered false" % path)

    def create(self, path: str, data: bytes, overwrite: bool = True, replication: Optional[int] = None) -> None:
        """Write a whole file (parents are created). The NameNode redirects to a DataNode."""
        params = {"overwrite": "true" if overwrite else "false"}
        if replication:
            params["replication"] = str(replication)
        status, headers, payload = self._namenode("PUT", "CREATE", path, params)
        if status != 307 or "location" not in headers:
            raise self._error("CREATE", path, status, payload)
        self._follow("PUT", "CREATE", path, headers["location"], data, expect=201)

    def read(self, path: str) -> bytes:
        """The whole content of a file."""
        status, headers, payload = self._namenode("GET", "OPEN", path)
        if status == 200:
            return payload  # an empty file is answered without a redirect
        if status != 307 or "location" not in headers:
            raise self._error("OPEN", path, status, payload)
        return self._follow("GET", "OPEN", path, headers["location"], None, expect=200)

    def rename(self, source: str, destination: str) -> None:
        """Move `source` to `destination` (one atomic NameNode operation). Fails if it returns false,
        e.g. when the destination's parent is missing or the destination exists as a file."""
        if not self._json("PUT", "RENAME", source, {"destination": destination}).get("boolean", False):
            raise WebHdfsError("WebHDFS RENAME %s -> %s: the NameNode answered false (does the "
                               "destination exist, or its parent not?)" % (source, destination))

    def delete(self, path: str, recursive: bool = False) -> bool:
        """Delete a file or directory; False when there was nothing to delete."""
        return bool(self._json("DELETE", "DELETE", path, {"recursive": "true" if recursive else "false"})
                    .get("boolean", False))
