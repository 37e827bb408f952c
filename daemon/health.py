"""Destination health: probe the destinations that deliveries are waiting for, and flush them when they answer.

Why: exponential backoff (5 s doubling to 15 min) keeps a dead PACS from being hammered, but after the outage the
last result would wait up to the full backoff. A probe is cheap (C-ECHO for DICOM, HTTP OPTIONS for STOW-RS, a TCP
connect for MLLP), so every ``send.probe_seconds`` each destination with deliveries in backoff gets one; when it
answers, its deliveries and their studies are due at once and the workers send them on their next poll. The probe
is the circuit breaker's half-open test: nothing is resent to a destination until it answers.
"""

from __future__ import annotations

import http.client
import socket
from datetime import datetime
from urllib.parse import urlsplit

from predictd.daemon import outbox
from predictd.daemon.config_send import Destination, DicomDestination, Hl7Destination, StowDestination
from predictd.daemon.db import Database, utcnow
from predictd.daemon.destinations import SendError
from predictd.daemon.destinations.dicom import echo
from predictd.daemon.destinations.stow import https_context


def answers(dest: Destination, calling_ae: str) -> bool:
    """Whether ``dest`` answers a cheap request now (never sends a document)."""
    try:
        if isinstance(dest, DicomDestination):
            calling = dest.calling_ae_title or calling_ae
            tls_name = f"send.destinations[{dest.name}].tls"
            return echo(dest.host, dest.port, dest.ae_title, calling, 5, dest.tls, tls_name) == 0x0000
        if isinstance(dest, StowDestination):
            return _http_answers(dest)
        return _tcp_answers(dest)
    except (SendError, OSError, http.client.HTTPException):
        return False


def _http_answers(dest: StowDestination) -> bool:
    """Any HTTP answer to OPTIONS (even 401 or 405) means the server is up again; the delivery tells the rest."""
    parts = urlsplit(dest.url)
    if not parts.hostname:
        return False
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=5, context=https_context(dest))
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("OPTIONS", parts.path or "/")
        conn.getresponse().read()
        return True
    finally:
        conn.close()


def _tcp_answers(dest: Hl7Destination) -> bool:
    with socket.create_connection((dest.host, dest.port), timeout=5):
        return True


def probe_and_flush(
    db: Database,
    destinations: dict[str, Destination],
    calling_ae: str,
    answered: dict[str, bool],
    now: datetime | None = None,
) -> dict[str, int]:
    """Probe each waiting destination once; ``{name: deliveries made due}`` for those that answer again.

    ``answered`` holds each destination's last probe. Only a destination that did not answer before (or was never
    probed) is flushed: one that answers C-ECHO but keeps refusing the documents themselves (0xA700) keeps its
    backoff instead of being retried every probe.
    """
    now = now or utcnow()
    flushed = {}
    for name in outbox.waiting_destinations(db, now):
        dest = destinations.get(name)
        if dest is None:
            continue
        up, was_up = answers(dest, calling_ae), answered.get(name, False)
        answered[name] = up
        if up and not was_up:
            flushed[name] = outbox.flush(db, name, now)
    return flushed
