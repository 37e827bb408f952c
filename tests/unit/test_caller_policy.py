"""Which hosts an AE title may call from (daemon/associations.py), the address forms a listener reports included."""

from __future__ import annotations

from predictd.daemon.associations import CallerPolicy
from predictd.daemon.config import ReceiveSettings


def policy() -> CallerPolicy:
    settings = ReceiveSettings(allowed_calling_aets=[{"ae": "CR1", "hosts": ["10.1.2.0/24"]}, "ANYWHERE"])
    return CallerPolicy.from_settings(settings)


def test_a_bound_title_is_refused_from_another_host() -> None:
    assert not policy().host_refused("CR1", "10.1.2.7")
    assert policy().host_refused("CR1", "10.9.9.9")
    assert not policy().host_refused("ANYWHERE", "192.0.2.1")


def test_an_ipv4_caller_seen_by_a_dual_stack_listener_is_matched_as_ipv4() -> None:
    """host = "::" accepts IPv4 callers as ::ffff:a.b.c.d; an IPv4 network must still match them."""
    assert not policy().host_refused("CR1", "::ffff:10.1.2.7")
    assert policy().host_refused("CR1", "::ffff:10.9.9.9")
    assert policy().host_refused("CR1", "not an address")


def test_update_replaces_the_allowlist_in_place() -> None:
    current = policy()
    current.update(ReceiveSettings(allowed_calling_aets=["CR2"], max_associations_per_ae=2))
    assert current.titles == ["CR2"] and current.per_ae == 2
