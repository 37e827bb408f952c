"""The HTTP endpoint over a real socket: a failing readiness check answers 503 and names itself, a check that raises
fails without taking the endpoint down, an unknown path is 404, a port in use is one line naming the setting."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from predictd.daemon.endpoint import Endpoint, Probes
from predictd.daemon.listeners import ListenError, bind
from predictd.daemon.metrics import Exposition


def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read(), exc.headers["Content-Type"]


LOW_SPOOL = "spool has 5 bytes free, below receive.min_free_bytes 10"


def _broken() -> str | None:
    raise RuntimeError("check blew up")


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    checks = {"database": lambda: None, "spool": lambda: LOW_SPOOL, "models": _broken}
    server = Endpoint("127.0.0.1", 0, Probes(checks, Exposition()))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_readiness_names_the_failing_checks(endpoint: Endpoint) -> None:
    status, body, kind = get(f"http://127.0.0.1:{endpoint.port}/readyz")
    assert (status, kind) == (503, "application/json")
    answer = json.loads(body)
    assert answer["ready"] is False and answer["checks"]["database"] == {"ok": True}
    assert answer["checks"]["spool"] == {
        "ok": False,
        "reason": "spool has 5 bytes free, below receive.min_free_bytes 10",
    }
    assert answer["checks"]["models"]["ok"] is False and "RuntimeError" in answer["checks"]["models"]["reason"]
    assert get(f"http://127.0.0.1:{endpoint.port}/healthz")[0] == 200  # alive, though not ready
    status, body, kind = get(f"http://127.0.0.1:{endpoint.port}/metrics")
    assert status == 200 and kind.startswith("text/plain") and b"process_resident_memory_bytes" in body
    assert get(f"http://127.0.0.1:{endpoint.port}/nope")[0] == 404


def test_a_port_in_use_is_one_line_naming_the_setting() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = int(taken.getsockname()[1])
        server = Endpoint("127.0.0.1", port, Probes({}, Exposition()))
        with pytest.raises(ListenError, match=rf"^http\.port {port} on 127\.0\.0\.1 is in use .*PREDICTD_HTTP__PORT"):
            bind(server.start, "http.port", "127.0.0.1", port)
