"""ServiceProcess: health waiting, clear failures with log tails, terminate and kill."""

import http.server
import pathlib
import sys
import textwrap

import pytest

from deploy.common.process import free_port
from deploy.common.service import ServiceError, ServiceProcess, runfile

HEALTHY_SERVER = textwrap.dedent("""
    import http.server, signal, sys
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
        def log_message(self, *args): pass
    server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    def stop(*_):
        print("draining", flush=True); sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    print("serving", flush=True)
    server.serve_forever()
""")


def script(tmp_path, text):
    path = tmp_path / "service.py"
    path.write_text(text)
    return [sys.executable, str(path)]


def test_start_waits_for_health_and_terminate_is_graceful(tmp_path):
    port = free_port()
    service = ServiceProcess("toy", script(tmp_path, HEALTHY_SERVER) + [str(port)], tmp_path / "toy.log",
                             health_url=f"http://127.0.0.1:{port}/healthz")
    with service:
        assert service.exited() is None and service.start_seconds is not None
    assert service.process.returncode == 0
    assert "serving" in service.log_text() and "draining" in service.log_text()


def test_a_service_that_dies_while_starting_is_reported_with_its_log(tmp_path):
    argv = script(tmp_path, "print('bad config: port missing'); raise SystemExit(3)")
    service = ServiceProcess("broken", argv, tmp_path / "broken.log", health_url="http://127.0.0.1:1/healthz")
    with pytest.raises(ServiceError, match="broken exited with 3(.|\\n)*bad config: port missing"):
        service.start(timeout=10)


def test_kill9_ends_a_service_that_ignores_sigterm(tmp_path):
    argv = script(tmp_path, "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)")
    service = ServiceProcess("stubborn", argv, tmp_path / "stubborn.log").start()
    assert service.kill9() == -9


def test_runfile_explains_what_is_missing():
    with pytest.raises(ServiceError, match="add its target to the data"):
        runfile("no/such/binary")
    assert runfile("deploy/common/service_test.py").is_file()
