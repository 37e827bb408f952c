"""The receiver's listeners: the application entity, its presentation contexts, and the ports it serves (plain TCP,
DICOM TLS, or both), with the event handlers of daemon.receive and daemon.associations bound to each.

Split from daemon/receive.py, which keeps what one C-STORE does; this module decides where and how predictd
listens. A port another program holds is one line naming the setting to change (:class:`ListenError`).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, _config, evt

from predictd.daemon import audit, incoming, metrics, tls
from predictd.daemon.associations import CallerPolicy, handle_accepted, handle_rejected, handle_requested
from predictd.daemon.audit import Auditor
from predictd.daemon.completion import AssociationTracker
from predictd.daemon.config import ReceiveSettings
from predictd.daemon.log import Event, get_logger
from predictd.daemon.receive import (
    IMAGE_SOP_CLASSES,
    RESULT_SOP_CLASSES,
    VERIFICATION,
    Record,
    SenderDone,
    StoreContext,
    accepted_transfer_syntaxes,
    handle_closed,
    handle_echo,
    handle_released,
    handle_store,
)
from predictd.daemon.spool import Spool

log = get_logger("receive")


class ListenError(RuntimeError):
    """A listener could not start (its port is taken, its address is not ours): one line naming the setting."""


class Receiver:
    """The DICOM Storage SCP; ``start`` returns at once, associations are served in pynetdicom's threads."""

    def __init__(
        self,
        settings: ReceiveSettings,
        spool: Spool,
        record: Record,
        sender_done: SenderDone | None = None,
        auditor: Auditor | None = None,
    ) -> None:
        """``sender_done``: called when a released association completed studies (see daemon.completion);
        ``auditor``: associations and refused instances go into the audit trail (stored ones through ``record``)."""
        self.settings = settings
        self.spool = spool
        self.record = record
        self.sender_done = sender_done
        self.auditor = auditor
        self._ae: AE | None = None
        self._server: Any = None
        self._tls_server: Any = None
        self._policy = CallerPolicy.from_settings(settings)

    @property
    def port(self) -> int:
        """The plain listener's bound port once started (useful with ``settings.port == 0``), else the configured
        one."""
        if self._server is not None:
            return int(self._server.server_address[1])
        return self.settings.port

    @property
    def tls_port(self) -> int | None:
        """The TLS listener's bound port once started, else the configured one; None without ``[receive.tls]``."""
        if self._tls_server is not None:
            return int(self._tls_server.server_address[1])
        return self.settings.tls.port if self.settings.tls is not None else None

    @property
    def listening(self) -> bool:
        """Whether every configured listener is serving (for /readyz)."""
        servers = [self._server] if self.settings.plain else []
        servers += [self._tls_server] if self.settings.tls is not None else []
        return self._ae is not None and all(s is not None and s.socket.fileno() >= 0 for s in servers)

    def build_ae(self) -> AE:
        """The application entity with its presentation contexts and AE title checks (nothing listens yet)."""
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.require_called_aet = True
        ae.require_calling_aet = CallerPolicy.from_settings(s).titles
        ae.maximum_associations = s.max_associations
        ae.maximum_pdu_size = s.max_pdu_size
        ae.network_timeout = min(s.idle_timeout_seconds, s.network_timeout_seconds)  # silence on an association
        ae.acse_timeout = s.idle_timeout_seconds  # connected, but no A-ASSOCIATE-RQ (or release) comes
        ae.dimse_timeout = s.network_timeout_seconds
        syntaxes = accepted_transfer_syntaxes()
        ae.add_supported_context(VERIFICATION)
        for uid in supported_sop_classes(s):
            ae.add_supported_context(uid, syntaxes)
        return ae

    def start(self) -> None:
        """Listen on settings.host:settings.port and/or the TLS port; returns immediately."""
        if self._ae is not None:
            raise RuntimeError("receiver already started")
        s = self.settings
        context = tls.server_context(s.tls) if s.tls is not None else None  # a bad certificate stops us here
        if not s.allowed_calling_aets:
            log.warning(
                Event.CONFIG_WARNING,
                reason="receive.allowed_calling_aets is empty: every calling AE title may store images",
                ae_title=s.ae_title,
            )
        # Datasets are streamed to a temporary file instead of memory: 15 MB DX images on many associations.
        # A process-wide pynetdicom switch; the handler also copes with it being off. The files go to <spool>/tmp.
        _config.STORE_RECV_CHUNKED_DATASET = True
        swept = incoming.sweep(self.spool.root)
        if swept:
            log.info(Event.INCOMING_SWEPT, files=swept, reason="partial data sets left by an earlier process")
        incoming.install(self.spool.root)
        tracker = AssociationTracker() if self.sender_done is not None else None
        ctx = StoreContext(
            spool=self.spool,
            record=self.record,
            min_free_bytes=s.min_free_bytes,
            tracker=tracker,
            auditor=self.auditor,
        )
        handlers = self._handlers(ctx, tracker)
        ae = self._ae = self.build_ae()
        try:
            if s.plain:
                self._server = bind(
                    lambda: ae.start_server((s.host, s.port), block=False, evt_handlers=handlers("plain")),
                    "receive.port",
                    s.host,
                    s.port,
                )
            if s.tls is not None and context is not None:
                port = s.tls.port
                self._tls_server = bind(
                    lambda: self._start_tls(ae, s.host, port, context, handlers("tls")),
                    "receive.tls.port",
                    s.host,
                    port,
                )
        except BaseException:
            self.stop()
            raise

    def _handlers(self, ctx: StoreContext, tracker: AssociationTracker | None) -> Callable[[str], list[Any]]:
        """The event handlers of one listener; ``transport`` ("plain" or "tls") goes into the audit trail."""
        s, policy = self.settings, self._policy

        def handlers(transport: str) -> list[Any]:
            bound: list[Any] = [
                (evt.EVT_C_STORE, handle_store, [ctx]),
                (evt.EVT_C_ECHO, handle_echo),
                (evt.EVT_REQUESTED, handle_requested, [policy, self.auditor, transport]),
                (evt.EVT_ACCEPTED, handle_accepted, [self.auditor, transport]),
                (evt.EVT_REJECTED, handle_rejected, [s.ae_title, policy, self.auditor, transport]),
                (evt.EVT_CONN_CLOSE, incoming.discard_partial),
            ]
            if tracker is not None and self.sender_done is not None:
                bound += [
                    (evt.EVT_RELEASED, handle_released, [tracker, self.sender_done]),
                    (evt.EVT_CONN_CLOSE, handle_closed, [tracker]),  # aborts and dropped connections: nothing done
                ]
            return bound

        return handlers

    def _start_tls(self, ae: AE, host: str, port: int, context: Any, handlers: list[Any]) -> Any:
        """The TLS listener: pynetdicom's non-blocking start_server, with the handshake in the association's thread
        (daemon.tls.HandshakeInThreadServer)."""
        server = ae.make_server(
            (host, port),
            ssl_context=context,
            evt_handlers=handlers,
            server_class=tls.HandshakeInThreadServer,
            handshake_timeout=self.settings.idle_timeout_seconds,
            on_handshake_failed=self._handshake_failed,
        )
        threading.Thread(target=server.serve_forever, name="AcceptorServer-tls", daemon=True).start()
        ae._servers.append(server)  # as start_server does: ae.shutdown() stops what this list holds
        return server

    def _handshake_failed(self, address: tuple[str, int], reason: str) -> None:
        log.warning(Event.ASSOCIATION_REJECTED, address=str(address[0]), transport="tls", reason=f"TLS: {reason}")
        metrics.ASSOCIATIONS.labels("tls", "refused").inc()
        if self.auditor is not None:
            peer = str(address[0])
            self.auditor.record(
                audit.association("", peer, transport="tls", accepted=False, reason=reason, tls_peer=None)
            )

    def reload_callers(self, new: ReceiveSettings) -> None:
        """SIGHUP: the calling-AE allowlist (with its hosts) and the per-caller cap, for the next associations."""
        self._policy.update(new)
        if self._ae is not None:
            self._ae.require_calling_aet = self._policy.titles
        changed = {
            "allowed_calling_aets": new.allowed_calling_aets,
            "max_associations_per_ae": new.max_associations_per_ae,
        }
        self.settings = self.settings.model_copy(update=changed)

    def stop(self) -> None:
        """Stop listening and end open associations (an unanswered C-STORE is resent by its sender)."""
        if self._ae is not None:
            self._ae.shutdown()
        self._ae = None
        self._server = None
        self._tls_server = None


def supported_sop_classes(s: ReceiveSettings) -> list[str]:
    """The storage SOP classes accepted at negotiation (besides Verification): radiographs and results, and with
    ``unsupported_sop_classes = "ignore"`` every other storage class (acknowledged and dropped)."""
    sop_classes = [*IMAGE_SOP_CLASSES, *RESULT_SOP_CLASSES]
    if s.unsupported_sop_classes == "ignore":
        # Accept everything so a PACS forwarding whole studies (SR, PR, ...) sees success; the handler discards.
        sop_classes += [
            str(cx.abstract_syntax) for cx in AllStoragePresentationContexts if cx.abstract_syntax not in sop_classes
        ]
    return sop_classes


def bind(start: Callable[[], Any], setting: str, host: str, port: int) -> Any:
    """``start()``, with the operating system's refusals to bind turned into one :class:`ListenError` line naming
    ``setting`` (used for the HTTP endpoint's port too)."""
    try:
        return start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(
                f"{setting} {port} on {host} is in use by another program; choose another port in the config "
                f"or with PREDICTD_{setting.upper().replace('.', '__')}=PORT"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ListenError(f"{host} is not an address of this machine ({setting} {port})") from None
        if exc.errno == errno.EACCES:
            raise ListenError(
                f"{setting} {port} on {host}: permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)"
            ) from None
        raise
