"""DICOM TLS (the DICOM Secure Transport Connection Profiles, BCP 195): SSL contexts for the receiver and for the
destinations, and a receiver server whose TLS handshake cannot stall other callers.

Contexts follow BCP 195 (RFC 9325): TLS 1.2 or newer, forward-secret AEAD cipher suites only, certificates checked
against the configured CA bundle (or the system's trust store for a client without one). A context is built from the
files each time it is asked for, so a renewed certificate is used without a restart.

Why a server class of our own: pynetdicom's ``AssociationServer.get_request`` wraps each accepted socket with
``do_handshake_on_connect=True`` in the thread that accepts connections, so one caller that connects and never
sends a ClientHello holds every other caller off the TLS port. :class:`HandshakeInThreadServer` wraps without the
handshake and runs it, with a deadline, in the association's own thread (``finish_request``), where a failure ends
only that connection, named in the log and the audit trail.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from predictd.daemon.config_base import ClientTls, ReceiveTls

BCP195_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!eNULL"
"""TLS 1.2 suites RFC 9325 recommends (ECDHE/DHE key exchange, AES-GCM or ChaCha20-Poly1305); TLS 1.3 suites are
all acceptable and not affected by this string."""

MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsConfigError(ValueError):
    """A certificate, key or CA file that does not load: one line naming the setting and the file, never its bytes."""


def server_context(tls: ReceiveTls) -> ssl.SSLContext:
    """The receiver's context: our certificate and key; with ``require_client_cert`` the caller must present a
    certificate issued by ``ca_bundle`` (mutual TLS)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx, tls.min_version)
    _load_chain(ctx, tls.certificate, tls.private_key, "receive.tls")
    if tls.ca_bundle is not None:
        _load_ca(ctx, tls.ca_bundle, "receive.tls.ca_bundle")
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    if tls.ca_bundle is None:  # nothing to check a certificate against: none is asked for
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(tls: ClientTls | None, setting: str) -> ssl.SSLContext:
    """A destination's context: the server's certificate checked against ``ca_bundle`` (or the system's trust
    store) and its host name, our own certificate presented when one is configured. ``setting`` names the table in
    errors (``send.destinations[pacs].tls``)."""
    tls = tls or ClientTls()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx, tls.min_version)
    if tls.ca_bundle is not None:
        _load_ca(ctx, tls.ca_bundle, f"{setting}.ca_bundle")
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = tls.check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if tls.certificate is not None and tls.private_key is not None:
        _load_chain(ctx, tls.certificate, tls.private_key, setting)
    return ctx


def peer_subject(sock: Any) -> str | None:
    """The commonName (or the whole subject) of a TLS peer's verified certificate; None without one."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    cert = sock.getpeercert()
    if not cert:
        return None
    subject: Any = cert.get("subject", ())  # ((("commonName", "x"),), ...): relative distinguished names
    names = [str(value) for rdn in subject for key, value in rdn if key == "commonName"]
    return names[0] if names else str(subject)


def handshake_reason(exc: BaseException) -> str:
    """What went wrong in a handshake, in OpenSSL's words (``CERTIFICATE_VERIFY_FAILED``...), without addresses."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no TLS handshake within the idle timeout"
    return type(exc).__name__


HandshakeFailed = Callable[[tuple[str, int], str], None]
"""Told the caller's address and why its TLS handshake failed."""


class HandshakeInThreadServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the TLS handshake moved from the accepting thread into the connection's
    thread, bounded by ``handshake_timeout`` seconds (see the module docstring)."""

    def __init__(
        self, *args: Any, handshake_timeout: float, on_handshake_failed: HandshakeFailed, **kwargs: Any
    ) -> None:
        self.handshake_timeout = handshake_timeout
        self.on_handshake_failed = on_handshake_failed
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None and self.ssl_context is not None
        client, address = self.socket.accept()
        return self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False), address

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(self.handshake_timeout)
            request.do_handshake()
            request.settimeout(None)
        except (OSError, ValueError) as exc:  # SSLError and timeouts are OSErrors; the connection ends here
            self.shutdown_request(request)  # pynetdicom's thread closes a socket only when an association ran on it
            self.on_handshake_failed(client_address, handshake_reason(exc))
            return
        super().finish_request(request, client_address)


def _harden(ctx: ssl.SSLContext, min_version: str) -> None:
    ctx.minimum_version = MIN_VERSIONS[min_version]
    ctx.set_ciphers(BCP195_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


def _load_chain(ctx: ssl.SSLContext, certificate: Path | None, key: Path | None, setting: str) -> None:
    if certificate is None or key is None:
        raise TlsConfigError(f"{setting}: certificate and private_key are both needed")
    try:
        ctx.load_cert_chain(certificate, key)
    except FileNotFoundError as exc:
        raise TlsConfigError(f"{setting}: no such file {exc.filename or certificate}") from None
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise TlsConfigError(f"{setting}: certificate {certificate} or key {key} does not load ({reason})") from None


def _load_ca(ctx: ssl.SSLContext, bundle: Path, setting: str) -> None:
    try:
        ctx.load_verify_locations(cafile=bundle)
    except FileNotFoundError:
        raise TlsConfigError(f"{setting}: no such file {bundle}") from None
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise TlsConfigError(f"{setting}: {bundle} holds no usable CA certificate ({reason})") from None
