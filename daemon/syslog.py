"""Audit records to a syslog collector as RFC 5424 messages, over UDP (RFC 5426), TCP (RFC 6587 octet counting) or
TLS (RFC 5425).

Why not the standard library's ``logging.handlers.SysLogHandler``: it writes the BSD format of RFC 3164 (no version,
no structured timestamp, no MSGID), not RFC 5424, and has no TLS. ``rfc5424-logging-handler`` on PyPI is a logging
handler (records would have to pass through the logging tree, where predictd's JSON renderer sits) and unreleased
since 2021. A message is one line of text: this module is the header, the framing and a socket.

Best effort, by design: the database table is the record (daemon.audit), this is a copy for the site's collector.
A collector that is down costs a logged warning per failed message, never a refused C-STORE; a TCP or TLS
connection is kept and made again on the next message after a failure.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from datetime import UTC
from typing import TYPE_CHECKING

from predictd.daemon import tls
from predictd.daemon.config import SyslogSettings
from predictd.daemon.log import Event, get_logger

if TYPE_CHECKING:
    from predictd.daemon.audit import AuditRecord

log = get_logger("audit")

FACILITY_LOG_AUDIT = 13
"""RFC 5424 facility 13, "log audit"."""
NOTICE, WARNING = 5, 4


def format_message(record: AuditRecord, source: str, app_name: str, hostname: str) -> bytes:
    """``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG``: MSGID is the record's kind, MSG its JSON."""
    severity = NOTICE if record.outcome == "success" else WARNING
    pri = FACILITY_LOG_AUDIT * 8 + severity
    timestamp = record.at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    procid = source.rpartition(":")[2] or "-"
    body = {
        "outcome": str(record.outcome),
        "actor": record.actor,
        "peer": record.peer,
        "study_uid": record.study_uid,
        "detail": record.detail,
    }
    header = f"<{pri}>1 {timestamp} {_field(hostname, 255)} {_field(app_name, 48)} {_field(procid, 128)}"
    text = f"{header} {_field(str(record.kind), 32)} - {json.dumps(body, separators=(',', ':'), default=str)}"
    return text.encode("utf-8")


def _field(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most ``limit`` characters, "-" when empty."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


class SyslogSender:
    """Sends each audit record; satisfies ``daemon.audit.Forwarder``."""

    def __init__(self, settings: SyslogSettings) -> None:
        self.settings = settings
        self.hostname = socket.gethostname()
        self._lock = threading.Lock()
        self._stream: socket.socket | None = None

    def send(self, record: AuditRecord, source: str) -> None:
        message = format_message(record, source, self.settings.app_name, self.hostname)
        try:
            with self._lock:
                if self.settings.protocol == "udp":
                    self._send_datagram(message)
                else:
                    self._send_framed(message)
        except (OSError, tls.TlsConfigError) as exc:
            self.close()
            log.warning(
                Event.JOB_FAILED,
                job="syslog",
                kind=str(record.kind),
                collector=f"{self.settings.host}:{self.settings.port}",
                reason=f"{type(exc).__name__}: {exc}",
            )

    def _send_datagram(self, message: bytes) -> None:
        s = self.settings
        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.sendto(message, (s.host, s.port))

    def _send_framed(self, message: bytes) -> None:
        """RFC 6587 octet counting: ``LENGTH SP MESSAGE``; RFC 5425 frames TLS the same way."""
        if self._stream is None:
            self._stream = self._connect()
        self._stream.sendall(str(len(message)).encode("ascii") + b" " + message)

    def _connect(self) -> socket.socket:
        s = self.settings
        sock = socket.create_connection((s.host, s.port), timeout=s.timeout_seconds)
        if s.protocol != "tls":
            return sock
        try:
            context: ssl.SSLContext = tls.client_context(s.tls, "audit.syslog.tls")
            return context.wrap_socket(sock, server_hostname=s.host)
        except BaseException:
            sock.close()
            raise

    def close(self) -> None:
        with self._lock:
            if self._stream is not None:
                try:
                    self._stream.close()
                finally:
                    self._stream = None
