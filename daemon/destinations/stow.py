"""DICOMweb destinations (``type = "stow"``): POST one Part 10 file to ``{dest.url}/studies``. No database, no retries.

A STOW-RS server is a destination like a C-STORE peer: one object per request, and every failure becomes a
:class:`~daemon.destinations.base.SendError` that says whether trying again later can help, so the send stage keeps
one retry policy for both. The HTTP status alone is not the answer: a 200 or 202 can still list the instance as
failed, so the DICOM JSON response body is checked for our SOP Instance UID. Only the standard library
(``http.client``) is used: one POST needs no HTTP client dependency, and ``http.client`` never routes through proxy
environment variables.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydicom

from predictd.daemon import tls
from predictd.daemon.config_send import StowDestination
from predictd.daemon.destinations.base import Parcel, SendError

FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"

RETRYABLE_STATUSES = frozenset({408, 429})
"""Request timeout and too many requests, with every 5xx: the server may take the same request later. Every other
status is permanent: the server understood and refused this request (bad body, credentials, URL, media type, a 409
conflict), and resending the same bytes to the same URL gets the same answer until an operator changes something."""


def deliver(parcel: Parcel, dest: StowDestination) -> None:
    """The handler: STOW-RS the parcel's file."""
    stow_file(parcel.path, dest)


def stow_file(path: Path, dest: StowDestination) -> None:
    """STOW-RS one Part 10 file, as-is, to ``dest``; returns once the server stored it, raises SendError otherwise."""
    try:
        data = path.read_bytes()
        sop_uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    except Exception as exc:  # the file in our own spool is unusable: resending will not fix it
        raise SendError(f"cannot read {path}: {type(exc).__name__}: {exc}", retryable=False) from exc
    parts = urlsplit(dest.url.rstrip("/") + "/studies")
    netloc = parts.netloc.rpartition("@")[2]  # never the credentials of a user:password@ URL
    where = f"{dest.name} ({parts.scheme}://{netloc}{parts.path})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SendError(f"{where}: not an http(s) URL", retryable=False)
    boundary = uuid.uuid4().hex
    while boundary.encode() in data:  # practically never; the boundary must not occur inside the part
        boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
        "Content-Length": str(len(head) + len(data) + len(tail)),
    }
    if dest.username is not None:
        token = base64.b64encode(f"{dest.username}:{dest.password or ''}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
    headers.update(dest.headers)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=dest.timeout_seconds, context=https_context(dest)
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=dest.timeout_seconds)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("POST", target, body=(head, data, tail), headers=headers)
        response = conn.getresponse()
        status, body = response.status, response.read()
    except ssl.SSLCertVerificationError as exc:  # a configuration problem, not a passing one
        raise SendError(f"{where}: TLS certificate not trusted: {exc.verify_message}", retryable=False) from exc
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, unreachable, cut short
        raise SendError(
            f"no STOW-RS answer from {where} ({type(exc).__name__}: {exc}; timeout {dest.timeout_seconds}s)",
            retryable=True,
        ) from exc
    finally:
        conn.close()
    _check_response(status, body, sop_uid, where)


def https_context(dest: StowDestination) -> ssl.SSLContext:
    """The destination's ``tls`` table (CAs, client certificate), or the system's trust store without one."""
    try:
        return tls.client_context(dest.tls, f"send.destinations[{dest.name}].tls")
    except tls.TlsConfigError as exc:
        raise SendError(str(exc), retryable=False) from None


def _check_response(status: int, body: bytes, sop_uid: str, where: str) -> None:
    """Map the HTTP status and the DICOM JSON body (Failed/Referenced SOP Sequence) to success or a SendError."""
    said = f"{where} answered STOW-RS with HTTP {status} {http.client.responses.get(status, '')}".rstrip()
    answer = _dicom_json(body)
    failed = next((item for item in _items(answer, FAILED_SOP_SEQUENCE) if _uid(item) == sop_uid), None)
    if 200 <= status < 300:
        if failed is not None:
            reason = _reason(failed)
            raise SendError(f"{said}, listing the instance as failed{_describe(reason)}", retryable=_retry(reason))
        if status == 202 and not any(_uid(item) == sop_uid for item in _items(answer, REFERENCED_SOP_SEQUENCE)):
            raise SendError(f"{said} without listing the instance as stored", retryable=False)
        return
    if status in RETRYABLE_STATUSES or status >= 500:
        raise SendError(said, retryable=True)
    # 409 and the rest of 4xx (and an unfollowed 3xx): refused. The failure reason, when given, says why.
    if failed is None:
        failed = next(iter(_items(answer, FAILED_SOP_SEQUENCE)), None)
    reason = _reason(failed) if failed is not None else None
    raise SendError(f"{said}{_describe(reason)}", retryable=status == 409 and _retry(reason))


def _retry(reason: int | None) -> bool:
    """Out of resources (0xA7xx) may pass later; any other failure reason is about the object or the request."""
    return reason is not None and 0xA700 <= reason <= 0xA7FF


def _describe(reason: int | None) -> str:
    return f" (failure reason 0x{reason:04X})" if reason is not None else ""


def _dicom_json(body: bytes) -> dict[str, Any]:
    """The response data set; empty when the body is not DICOM JSON (errors may come as HTML, or empty)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return {}
    if isinstance(parsed, list) and parsed:  # a few servers wrap the single data set in an array
        parsed = parsed[0]
    return parsed if isinstance(parsed, dict) else {}


def _items(dataset: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = dataset.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return [item for item in values if isinstance(item, dict)] if isinstance(values, list) else []


def _value(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None


def _uid(item: dict[str, Any]) -> str | None:
    value = _value(item, REFERENCED_SOP_INSTANCE_UID)
    return str(value) if value is not None else None


def _reason(item: dict[str, Any]) -> int | None:
    value = _value(item, FAILURE_REASON)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
