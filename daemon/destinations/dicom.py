"""DICOM destinations (``type = "dicom"``): C-STORE one file to a destination, C-ECHO a peer. No database, no retries.

Every failure becomes a SendError that says what went wrong and whether trying again later can help; the send stage
owns the retry policy and the outbox rows.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association

from predictd.daemon import tls
from predictd.daemon.config_base import ClientTls
from predictd.daemon.config_send import DicomDestination
from predictd.daemon.destinations.base import Parcel, SendError

VERIFICATION = "1.2.840.10008.1.1"

SUCCESS_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
"""Success, and the storage warnings (coercion, elements discarded, data set does not match SOP class): the peer
kept the instance, so resending it would not change anything."""


def deliver(parcel: Parcel, dest: DicomDestination) -> None:
    """The handler: C-STORE the parcel's file, presenting the destination's calling AE title or ``receive.ae_title``."""
    store_file(parcel.path, dest, dest.calling_ae_title or parcel.calling_ae)


def store_file(path: Path | str, dest: DicomDestination, calling_ae: str) -> None:
    """C-STORE one Part 10 file to ``dest``; returns on success (or a storage warning), raises SendError otherwise.

    The file's own transfer syntax is proposed in a context of its own, plus explicit/implicit little endian, so an
    uncompressed file reaches any peer (pynetdicom re-encodes between them) and a compressed one goes as-is where
    accepted (it is never transcoded here: a peer that refuses its syntax is a permanent error).
    """
    try:
        ds = pydicom.dcmread(path)
        sop_class = str(ds.SOPClassUID)
        syntax = str(ds.file_meta.TransferSyntaxUID)
    except Exception as exc:  # the file in our own spool is unusable: resending will not fix it
        raise SendError(f"cannot read {path}: {type(exc).__name__}: {exc}", retryable=False) from exc
    where = f"{dest.name} ({dest.ae_title}@{dest.host}:{dest.port})"
    ae = _ae(calling_ae, dest.timeout_seconds)
    # Separate contexts: an acceptor picks one syntax per context, by its own preference, which may not be ours.
    if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ae.add_requested_context(sop_class, [syntax])
    ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = _associate(ae, dest.host, dest.port, dest.ae_title, where, _tls(dest.tls, dest.name))
    try:
        if not any(cx.abstract_syntax == sop_class for cx in assoc.accepted_contexts):
            raise SendError(
                f"{where} accepted no presentation context for SOP class {sop_class} (transfer syntax {syntax})",
                retryable=False,
            )
        try:
            rsp = assoc.send_c_store(ds)
        except ValueError as exc:  # no accepted context can carry this transfer syntax
            raise SendError(f"{where} cannot take transfer syntax {syntax}: {exc}", retryable=False) from exc
        status = rsp.get("Status") if rsp is not None else None
        if status is None:
            raise SendError(
                f"no C-STORE response from {where} (timeout after {dest.timeout_seconds}s or association aborted)",
                retryable=True,
            )
        if int(status) not in SUCCESS_STATUSES:
            comment = str(rsp.get("ErrorComment") or "").strip()
            raise SendError(
                f"{where} answered C-STORE with status 0x{int(status):04X}" + (f" ({comment})" if comment else ""),
                retryable=_status_retryable(int(status)),
            )
    finally:
        _close(assoc)


def echo(
    host: str,
    port: int,
    ae_title: str,
    calling_ae: str = "PREDICTD",
    timeout: float = 10,
    tls_settings: ClientTls | None = None,
    tls_setting: str = "tls",
) -> int:
    """C-ECHO a peer and return its status (0x0000 is success); SendError when no association or no answer.
    ``tls_settings``: over DICOM TLS (``tls_setting`` names the table in errors)."""
    ae = _ae(calling_ae, timeout)
    ae.add_requested_context(VERIFICATION)
    where = f"{ae_title}@{host}:{port}"
    context = _tls(tls_settings, tls_setting) if tls_settings is not None else None
    assoc = _associate(ae, host, port, ae_title, where, context)
    try:
        rsp = assoc.send_c_echo()
        status = rsp.get("Status") if rsp is not None else None
        if status is None:
            raise SendError(f"no C-ECHO response from {where} (timeout or association aborted)", retryable=True)
        return int(status)
    finally:
        _close(assoc)


def _status_retryable(status: int) -> bool:
    """Out of resources and processing failures may pass later; a refused data set, SOP class or caller will not."""
    if 0xA700 <= status <= 0xA7FF or status in (0x0110, 0x0213):
        return True
    if 0xA900 <= status <= 0xA9FF or 0xC000 <= status <= 0xCFFF:
        return False
    return status not in (0x0117, 0x0122, 0x0124, 0x0211)


def _ae(calling_ae: str, timeout: float) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    return ae


def _tls(settings: ClientTls | None, name: str) -> ssl.SSLContext | None:
    """The destination's TLS context, or None for plain TCP; a certificate file that does not load is a setting
    to fix, not a passing failure."""
    if settings is None:
        return None
    try:
        return tls.client_context(settings, f"send.destinations[{name}].tls")
    except tls.TlsConfigError as exc:
        raise SendError(str(exc), retryable=False) from None


def _associate(
    ae: AE, host: str, port: int, ae_title: str, where: str, context: ssl.SSLContext | None = None
) -> Association:
    connected: list[bool] = []

    def on_open(_event: Any) -> None:
        connected.append(True)

    tls_args = (context, host) if context is not None else None
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=tls_args, evt_handlers=[(evt.EVT_CONN_OPEN, on_open)])
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        transient = getattr(rsp, "result", None) == 0x02
        try:
            detail = f"{rsp.source_str}: {rsp.reason_str}"  # type: ignore[union-attr]
        except Exception:
            detail = "no reason given"

        raise SendError(
            f"{where} rejected the association ({'transient' if transient else 'permanent'}: {detail})",
            retryable=transient,
        )
    if not connected and context is not None:
        _raise_tls_failure(context, host, port, where, ae.connection_timeout)
    if not connected:
        raise SendError(
            f"cannot connect to {where} (connection refused, unreachable or timed out after {ae.connection_timeout}s)",
            retryable=True,
        )
    hint = " (over TLS: does the peer accept our client certificate?)" if context is not None else ""
    raise SendError(f"association with {where} was aborted or timed out during negotiation{hint}", retryable=True)


def _raise_tls_failure(context: ssl.SSLContext, host: str, port: int, where: str, timeout: float | None) -> None:
    """pynetdicom only logs why a TLS connection failed; one handshake of our own finds the reason, so that an
    untrusted certificate (fix the settings) is told apart from a peer that is down (try again later)."""
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return  # it works now: the association's failure was a passing one
    except ssl.SSLCertVerificationError as exc:
        raise SendError(f"{where}: TLS {tls.handshake_reason(exc)}", retryable=False) from None
    except ssl.SSLError as exc:
        raise SendError(f"{where}: TLS handshake failed ({tls.handshake_reason(exc)})", retryable=True) from None
    except OSError:
        return  # not reachable: the caller says so


def _close(assoc: Association) -> None:
    if assoc.is_established:
        assoc.release()
