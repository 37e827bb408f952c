"""Who may associate with the receiver, and how long an association may hold it: AE titles, hosts, limits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pydicom
import pytest
from pynetdicom import AE
from structlog.testing import capture_logs

from tests.integration.receive_helpers import c_store
from tests.integration.receivers import CALLED, CALLING, Running
from tests.support import pydicom_data_file, wait_until

# --- association checks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("calling", "called"), [("STRANGER", CALLED), (CALLING, "SOMEONE_ELSE")])
def test_unknown_calling_or_called_ae_is_rejected(
    start_receiver: Callable[..., Running], calling: str, called: str
) -> None:
    rx = start_receiver()
    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    with capture_logs() as logs:
        assoc = ae.associate("127.0.0.1", rx.port, ae_title=called)
        assert assoc.is_rejected
    (event,) = [e for e in logs if e["event"] == "association_rejected"]
    assert event["calling_ae"] == calling


def test_empty_allowlist_accepts_anyone_with_a_warning(start_receiver: Callable[..., Running]) -> None:
    with capture_logs() as logs:
        rx = start_receiver(allowed_calling_aets=[])
    assert any(e["event"] == "config_warning" for e in logs)
    assert c_store(rx.port, [pydicom.dcmread(pydicom_data_file("RG1_UNCR.dcm"))], calling="ANYBODY") == [0x0000]


def _associate(port: int, calling: str) -> Any:
    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    return ae.associate("127.0.0.1", port, ae_title=CALLED)


def test_idle_associations_of_one_caller_cannot_lock_a_modality_out(start_receiver: Callable[..., Running]) -> None:
    """Ten idle associations from one allowed AE: the caller's cap rejects the ones past it (transient), and a
    modality still gets in (pynetdicom's default of 10 associations in all would have refused it)."""
    rx = start_receiver(allowed_calling_aets=[CALLING, "IDLER"], max_associations_per_ae=4)
    idle = [_associate(rx.port, "IDLER") for _ in range(10)]
    try:
        assert [a.is_established for a in idle] == [True] * 4 + [False] * 6
        refused = idle[4]
        assert refused.is_rejected and refused.acceptor.primitive.result == 0x02  # transient: try again later
        assert c_store(rx.port, [pydicom.dcmread(pydicom_data_file("RG1_UNCR.dcm"))]) == [0x0000]
    finally:
        for assoc in idle:
            if assoc.is_established:
                assoc.release()


def test_an_association_that_sends_nothing_is_cut_after_the_idle_timeout(
    start_receiver: Callable[..., Running],
) -> None:
    rx = start_receiver(idle_timeout_seconds=1.0)
    assoc = _associate(rx.port, CALLING)
    assert assoc.is_established
    wait_until(lambda: not assoc.is_established, timeout=15, what="the idle association to be aborted")
    assert assoc.is_aborted


@pytest.mark.parametrize(("hosts", "accepted"), [(["10.1.2.0/24"], False), (["10.1.2.0/24", "127.0.0.0/8"], True)])
def test_an_ae_title_may_be_bound_to_its_hosts(
    start_receiver: Callable[..., Running], hosts: list[str], accepted: bool
) -> None:
    """An AE title is a password anyone can read: an entry may name the networks it may call from."""
    rx = start_receiver(allowed_calling_aets=[{"ae": CALLING, "hosts": hosts}])
    with capture_logs() as logs:
        assoc = _associate(rx.port, CALLING)
    try:
        assert assoc.is_established == accepted
        if not accepted:
            assert assoc.is_rejected and assoc.acceptor.primitive.result == 0x01
            (event,) = [e for e in logs if e["event"] == "association_rejected"]
            assert event["reason"] == "host not allowed for this AE" and event["address"] == "127.0.0.1"
    finally:
        if assoc.is_established:
            assoc.release()
