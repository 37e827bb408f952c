"""HL7 destinations (``type = "hl7"``): HL7 v2 over MLLP; send one message, read its ACK, say whether the receiver
took it. No database, no retries.

One connection per message (connect, send, read one framed ACK, close): a dictation system receives a few messages
an hour from us, and a fresh connection never inherits a half-read frame. Every failure becomes a SendError, as a
DICOM send does (daemon.destinations.dicom), so the send stage's retry policy treats both alike:

- AA, CA (application / commit accept): delivered. An enhanced-mode receiver's CA already means it took custody.
- AE, CE (application / commit error): retryable; the receiver had a problem that may pass (HL7 2.9.2).
- AR, CR (reject): permanent; the receiver refuses this message (unsupported type, version, processing id ...).
- refused, reset or closed connection, no complete ACK before ``timeout_seconds``, an ACK that does not parse or
  answers another control id: retryable.

The message is encoded as UTF-8 (reporting.hl7 declares MSH-18 "UNICODE UTF-8"); an ACK is decoded as UTF-8 too,
bad bytes replaced. Nothing of the message, which holds PHI, goes into an error: only the control id, the
destination and what the receiver said in MSA-3 (cut short).

Why not python-hl7's ``hl7.client.MLLPClient`` (0.4.5, read in ``hl7/client.py``): it connects with no timeout, writes
with ``socket.send`` (which may send only part of a frame) and returns the first ``recv`` of up to 4 KB as the ACK, so
a silent receiver hangs a worker for ever and an ACK that arrives in two segments is cut. The tests
``test_no_answer_times_out`` and ``test_trickling_answer_hits_the_deadline`` (tests/integration/test_mllp.py) are
the cases it fails. The ACK is parsed with python-hl7 (``reporting.hl7.parse_ack``).
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

from predictd.daemon import tls
from predictd.daemon.config_send import Hl7Destination
from predictd.daemon.destinations.base import Parcel, SendError
from predictd.reporting.hl7 import parse_ack

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
MAX_ACK_BYTES = 1 << 20
"""An acknowledgment is a few hundred bytes; a peer that sends a megabyte without an end block is not answering."""
_ACCEPT = frozenset({"AA", "CA"})
_RETRY = frozenset({"AE", "CE"})


def deliver(parcel: Parcel, dest: Hl7Destination) -> None:
    """The handler: send the message file exactly as the report stage wrote it, so a retry sends the same bytes."""
    send_hl7(read_message(parcel.path), dest)


def read_message(path: Path) -> str:
    """The HL7 message in ``path``, decoded as UTF-8.

    Read as bytes: text mode would turn HL7's carriage-return segment separators into newlines.
    """
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise SendError(f"HL7 message file unreadable: {exc.strerror or exc}", retryable=False) from exc


def send_hl7(message: str, dest: Hl7Destination) -> None:
    """Send one HL7 message to ``dest`` over MLLP and return when it is accepted (AA/CA); SendError otherwise.

    ``dest.timeout_seconds`` bounds the connect, the send, and (as one deadline, not per read) the wait for the
    complete ACK, so a receiver that trickles bytes cannot hold a worker forever.
    """
    control_id = _control_id(message)
    where = f"{dest.name} ({dest.host}:{dest.port})"
    what = f"HL7 message {control_id} to {where}"
    frame = START_BLOCK + message.encode("utf-8") + END_BLOCK
    try:
        with _connect(dest) as sock:
            sock.sendall(frame)
            reply = _read_frame(sock, time.monotonic() + dest.timeout_seconds, what, dest.timeout_seconds)
    except SendError:
        raise
    except ssl.SSLCertVerificationError as exc:  # a setting to fix, not a passing failure
        raise SendError(f"{what}: TLS {tls.handshake_reason(exc)}", retryable=False) from exc
    except ssl.SSLError as exc:
        raise SendError(f"{what}: TLS failed ({tls.handshake_reason(exc)})", retryable=True) from exc
    except ConnectionRefusedError as exc:
        raise SendError(f"cannot connect to {where}: connection refused", retryable=True) from exc
    except ConnectionResetError as exc:
        raise SendError(f"{what}: the receiver closed the connection (reset)", retryable=True) from exc
    except TimeoutError as exc:
        raise SendError(f"{what}: timed out after {dest.timeout_seconds}s", retryable=True) from exc
    except OSError as exc:  # broken pipe, unreachable network, name resolution ...
        raise SendError(f"{what}: {type(exc).__name__}: {exc.strerror or exc}", retryable=True) from exc
    _check_ack(reply, control_id, what)


def _connect(dest: Hl7Destination) -> socket.socket:
    """A connected socket, TLS-wrapped (handshake done) when the destination has a ``tls`` table."""
    context = None
    if dest.tls is not None:
        try:
            context = tls.client_context(dest.tls, f"send.destinations[{dest.name}].tls")
        except tls.TlsConfigError as exc:
            raise SendError(str(exc), retryable=False) from None
    sock = socket.create_connection((dest.host, dest.port), timeout=dest.timeout_seconds)
    if context is None:
        return sock
    try:
        return context.wrap_socket(sock, server_hostname=dest.host)
    except BaseException:
        sock.close()
        raise


def _control_id(message: str) -> str:
    """MSH-10, read without a parser; a message without one is our bug, and resending cannot fix it."""
    header = message.split("\r", 1)[0]
    fields = header.split(header[3]) if header.startswith("MSH") and len(header) > 3 else []
    control_id = fields[9].strip() if len(fields) > 9 else ""
    if not control_id:
        raise SendError("not an HL7 message with a control id (MSH-10); not sent", retryable=False)
    return control_id


def _read_frame(sock: socket.socket, deadline: float, what: str, timeout: float) -> str:
    """Bytes up to the end block, before ``deadline``; the frame's content decoded, without start and end blocks."""
    buffer = bytearray()
    while END_BLOCK not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SendError(f"{what}: no complete ACK within {timeout}s", retryable=True)
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(4096)
        except TimeoutError as exc:
            raise SendError(f"{what}: no complete ACK within {timeout}s", retryable=True) from exc
        if not chunk:
            state = "a partial ACK" if buffer else "no ACK"
            raise SendError(f"{what}: the receiver closed the connection after {state}", retryable=True)
        buffer += chunk
        if len(buffer) > MAX_ACK_BYTES:
            raise SendError(f"{what}: over {MAX_ACK_BYTES} bytes without an MLLP end block", retryable=True)
    start = buffer.find(START_BLOCK)
    end = buffer.find(END_BLOCK)
    if start < 0 or start > end:
        raise SendError(f"{what}: malformed MLLP frame in reply (no start block)", retryable=True)
    return bytes(buffer[start + 1 : end]).decode("utf-8", errors="replace")


def _check_ack(reply: str, control_id: str, what: str) -> None:
    try:
        ack = parse_ack(reply)
    except ValueError as exc:
        raise SendError(f"{what}: malformed ACK: {exc}", retryable=True) from exc
    if ack.control_id != control_id:
        raise SendError(f"{what}: ACK answers another message ({ack.control_id[:40]!r})", retryable=True)
    if ack.code in _ACCEPT:
        return
    said = f": {ack.text[:200]}" if ack.text else ""
    if ack.code in _RETRY:
        raise SendError(f"{what}: receiver answered {ack.code} (error){said}", retryable=True)
    raise SendError(f"{what}: receiver answered {ack.code} (rejected){said}", retryable=False)
