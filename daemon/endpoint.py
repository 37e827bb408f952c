"""The HTTP endpoint of ``predictd serve`` (``[http]``): /healthz, /readyz and Prometheus /metrics.

- ``/healthz``: 200 while the process serves HTTP at all (a liveness probe: restart it when this fails).
- ``/readyz``: 200 when every check passes, else 503; both with the checks as JSON: the database answers at the
  schema head, the receiver listens on every configured port, the models are loaded, the spool is above its
  free-space watermark (an orchestrator stops routing to a host that is not ready).
- ``/metrics``: the Prometheus text format from ``prometheus-client`` (daemon.metrics).

The standard library's threading HTTP server, bound to ``http.host`` (loopback by default): three read-only
paths need no web framework, and every request runs on its own thread, so a slow scrape never blocks a probe.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from predictd.daemon.log import Event, get_logger
from predictd.daemon.metrics import Exposition
from predictd.models.phi import exception_text

log = get_logger("http")

Check = Callable[[], str | None]
"""A readiness check: None when it passes, else why not (one line, no PHI)."""


@dataclass(frozen=True)
class Probes:
    checks: Mapping[str, Check]
    exposition: Exposition

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        results: dict[str, Any] = {}
        for name, check in self.checks.items():
            try:
                problem = check()
            except Exception as exc:  # a check that breaks fails, it does not take the endpoint down
                problem = exception_text(exc)
            results[name] = {"ok": problem is None, **({"reason": problem} if problem else {})}
        ready = all(r["ok"] for r in results.values())
        return ready, {"ready": ready, "checks": results}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, "application/json", b'{"status":"ok"}\n')
        elif path == "/readyz":
            ready, body = self.server.probes.readiness()
            self._send(200 if ready else 503, "application/json", json.dumps(body).encode() + b"\n")
        elif path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, generate_latest(self.server.probes.exposition))
        else:
            self._send(404, "text/plain", b"not found: /healthz, /readyz, /metrics\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # probes every few seconds would drown the log; Prometheus records scrape failures itself


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], probes: Probes) -> None:
        self.probes = probes
        super().__init__(address, _Handler)


class Endpoint:
    """The HTTP server on its own thread; ``start`` binds (a port in use raises OSError), ``stop`` shuts it."""

    def __init__(self, host: str, port: int, probes: Probes) -> None:
        self.host, self.requested_port, self.probes = host, port, probes
        self._server: _Server | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server is not None else self.requested_port

    def start(self) -> None:
        self._server = _Server((self.host, self.requested_port), self.probes)
        threading.Thread(target=self._server.serve_forever, name="http", daemon=True).start()
        log.info(Event.HTTP_LISTENING, host=self.host, port=self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
