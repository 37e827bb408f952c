"""Who may associate with the receiver, and how many at once: AE titles, their hosts, per-caller caps, idle limits.

pynetdicom checks the calling AE title and one global association limit (10 by default, so nine idle associations
from an allowed AE lock a modality out). This adds what a hospital network needs, in pynetdicom's EVT_REQUESTED hook,
which may answer an A-ASSOCIATE-RQ with a rejection before negotiation: the hosts each AE title may call from (an AE
title alone is a password anyone on the network can read) and a cap per calling AE title. Idle associations are cut
by the ACSE and network timeouts (``receive.idle_timeout_seconds``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from pynetdicom import evt

from predictd.daemon import audit, metrics, tls
from predictd.daemon.audit import Auditor
from predictd.daemon.config import AllowedCaller, ReceiveSettings
from predictd.daemon.log import Event, get_logger

log = get_logger("receive")

PERMANENT, TRANSIENT = 0x01, 0x02
SERVICE_USER, PRESENTATION = 0x01, 0x03
CALLING_AE_NOT_RECOGNISED, LOCAL_LIMIT_EXCEEDED = 0x03, 0x02


@dataclass
class CallerPolicy:
    """The allowlist (title → networks; no networks: any host) and the per-title cap; :meth:`update` replaces both
    on SIGHUP (each assignment is atomic: a handler sees the old list or the new one)."""

    allowed: dict[str, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]]
    per_ae: int

    @classmethod
    def from_settings(cls, s: ReceiveSettings) -> CallerPolicy:
        allowed = {}
        for entry in s.allowed_calling_aets:
            caller = entry if isinstance(entry, AllowedCaller) else AllowedCaller(ae=entry)
            allowed[caller.ae.strip()] = tuple(caller.hosts)
        return cls(allowed, s.max_associations_per_ae)

    def update(self, s: ReceiveSettings) -> None:
        fresh = CallerPolicy.from_settings(s)
        self.allowed, self.per_ae = fresh.allowed, fresh.per_ae

    @property
    def titles(self) -> list[str]:
        """For pynetdicom's own calling AE check."""
        return list(self.allowed)

    def host_refused(self, calling: str, address: str) -> bool:
        networks = self.allowed.get(calling, ())
        if not networks:
            return False
        try:
            host = ipaddress.ip_address(address)
        except ValueError:
            return True
        if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped is not None:
            host = host.ipv4_mapped  # a dual-stack listener (host = "::") sees an IPv4 caller as ::ffff:a.b.c.d
        return not any(host in network for network in networks)


def handle_requested(event: evt.Event, policy: CallerPolicy, auditor: Auditor | None, transport: str) -> None:
    """EVT_REQUESTED: reject a caller from a host its AE title is not allowed on, or over its association cap."""
    assoc = event.assoc
    rq: Any = assoc.requestor.primitive
    calling = str(rq.calling_ae_title).strip() if rq is not None else ""
    address = str(assoc.requestor.address)
    if policy.host_refused(calling, address):
        reason = "host not allowed for this AE"
        _reject(assoc, (PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED), calling, reason)
        _audit(auditor, event, calling, transport, reason)
        return
    mine = [
        a
        for a in assoc.ae.active_associations
        if a is not assoc and a.is_acceptor and str(a.requestor.ae_title).strip() == calling
    ]
    if len(mine) >= policy.per_ae:
        reason = f"this calling AE already holds {len(mine)} associations (receive.max_associations_per_ae)"
        _reject(assoc, (TRANSIENT, PRESENTATION, LOCAL_LIMIT_EXCEEDED), calling, reason)
        _audit(auditor, event, calling, transport, reason)


def _reject(assoc: Any, rsd: tuple[int, int, int], calling: str, reason: str) -> None:
    """A-ASSOCIATE-RJ, then what pynetdicom's own rejection does: mark it (negotiation is skipped) and end it."""
    log.warning(Event.ASSOCIATION_REJECTED, calling_ae=calling, address=str(assoc.requestor.address), reason=reason)
    assoc.acse.send_reject(*rsd)
    assoc.is_rejected = True
    assoc.kill()


def handle_rejected(
    event: evt.Event, ae_title: str, policy: CallerPolicy, auditor: Auditor | None, transport: str
) -> None:
    """EVT_REJECTED (pynetdicom's own rejections): say which check refused the caller."""
    rq = event.assoc.requestor.primitive
    calling = str(rq.calling_ae_title).strip() if rq is not None else None
    called = str(rq.called_ae_title).strip() if rq is not None else None
    if policy.allowed and calling not in policy.allowed:
        reason = "calling AE title not in receive.allowed_calling_aets"
    elif called != ae_title:
        reason = f"called AE title is not {ae_title!r}"
    else:
        reason = "association limit reached (receive.max_associations)"
    log.warning(Event.ASSOCIATION_REJECTED, calling_ae=calling, called_ae=called, reason=reason)
    _audit(auditor, event, calling or "", transport, reason)


def handle_accepted(event: evt.Event, auditor: Auditor | None, transport: str) -> None:
    """EVT_ACCEPTED: the association goes into the audit trail (who, from where, over what)."""
    _audit(auditor, event, str(event.assoc.requestor.ae_title).strip(), transport, None)


def _audit(auditor: Auditor | None, event: evt.Event, calling: str, transport: str, refused: str | None) -> None:
    """Counted in the metrics, and recorded in the audit trail."""
    metrics.ASSOCIATIONS.labels(transport, "accepted" if refused is None else "refused").inc()
    if auditor is None:
        return
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    record = audit.association(
        calling,
        str(event.assoc.requestor.address),
        transport=transport,
        accepted=refused is None,
        reason=refused,
        tls_peer=tls.peer_subject(sock),
    )
    auditor.record(record)
