"""DICOM TLS both ways with real peers: dcmtk storescu +tls into predictd's TLS port (mutual TLS), and predictd's
SR over TLS into dcmtk storescp +tls; certificates made in the test (tests/support/certs.py)."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from predictd.daemon.config import ReceiveSettings
from predictd.daemon.config_base import ClientTls, ReceiveTls
from predictd.daemon.config_send import DicomDestination
from predictd.daemon.destinations import SendError
from predictd.daemon.destinations.dicom import echo, store_file
from predictd.daemon.tls import TlsConfigError, client_context, server_context
from tests.integration.receivers import CALLED, CALLING, Running
from tests.support import CR_JLSL, free_port, new_copy, storescp, wait_until
from tests.support.certs import Pki, make_pki

PEER_AE = "TLSPEER"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _dcmtk(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail(f"dcmtk {name} is not installed, and CI must run the TLS tests")
        pytest.skip(f"dcmtk {name} not installed")
    return exe


def storescu_tls(port: int, path: Path, *tls_args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_dcmtk("storescu"), *tls_args, "-aet", CALLING, "-aec", CALLED, "-xt", "127.0.0.1", str(port), str(path)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def tls_receiver(start_receiver: Callable[..., Running], pki: Pki) -> Running:
    tls = ReceiveTls(
        port=free_port(), certificate=pki.server.certificate, private_key=pki.server.private_key, ca_bundle=pki.ca
    )
    return start_receiver(tls=tls, idle_timeout_seconds=3)


def test_storescu_with_a_trusted_client_certificate_stores(tls_receiver: Running, pki: Pki, tmp_path: Path) -> None:
    image = new_copy(CR_JLSL, tmp_path / "a.dcm")
    result = storescu_tls(
        tls_receiver.receiver.tls_port or 0,
        image,
        "+tls", str(pki.client.private_key), str(pki.client.certificate), "+cf", str(pki.ca),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [i.sop_instance_uid for i in tls_receiver.instances()] == [_uid(image)]


def _uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.mark.parametrize("who", ["no certificate", "untrusted certificate"])
def test_storescu_without_a_trusted_certificate_is_refused(
    tls_receiver: Running, pki: Pki, tmp_path: Path, who: str
) -> None:
    image = new_copy(CR_JLSL, tmp_path / "a.dcm")
    if who == "no certificate":
        args = ["+tla", "+cf", str(pki.ca)]
    else:
        args = ["+tls", str(pki.rogue.private_key), str(pki.rogue.certificate), "+cf", str(pki.ca)]
    result = storescu_tls(tls_receiver.receiver.tls_port or 0, image, *args)
    assert result.returncode != 0
    assert tls_receiver.instances() == []


def test_plain_storescu_on_the_tls_port_is_refused(tls_receiver: Running, tmp_path: Path) -> None:
    result = storescu_tls(tls_receiver.receiver.tls_port or 0, new_copy(CR_JLSL, tmp_path / "a.dcm"))
    assert result.returncode != 0
    assert tls_receiver.instances() == []


def test_a_silent_connection_does_not_hold_off_other_callers(tls_receiver: Running, pki: Pki, tmp_path: Path) -> None:
    """pynetdicom would run the handshake in the accepting thread: one caller that never says hello blocks all."""
    port = tls_receiver.receiver.tls_port or 0
    with socket.create_connection(("127.0.0.1", port)):  # connects, never sends a ClientHello
        result = storescu_tls(
            port,
            new_copy(CR_JLSL, tmp_path / "a.dcm"),
            "+tls", str(pki.client.private_key), str(pki.client.certificate), "+cf", str(pki.ca),
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(tls_receiver.instances()) == 1


def test_plain_false_leaves_only_the_tls_port(start_receiver: Callable[..., Running], pki: Pki) -> None:
    tls = ReceiveTls(
        port=free_port(), certificate=pki.server.certificate, private_key=pki.server.private_key, ca_bundle=pki.ca
    )
    plain_port = free_port()
    running = start_receiver(tls=tls, plain=False, port=plain_port)
    assert running.receiver.listening
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", plain_port)) != 0
    client = ClientTls(ca_bundle=pki.ca, certificate=pki.client.certificate, private_key=pki.client.private_key)
    assert echo("127.0.0.1", tls.port, CALLED, CALLING, 10, client) == 0x0000


# --- predictd as the TLS client -----------------------------------------------------------------------------------


@pytest.fixture
def storescp_tls(tmp_path: Path, pki: Pki) -> Iterator[tuple[int, Path]]:
    """dcmtk storescp +tls with the server certificate, requiring a client certificate from the test CA."""
    out = tmp_path / "peer"
    tls = ["+tls", str(pki.server.private_key), str(pki.server.certificate), "+cf", str(pki.ca), "-rc", "+xa"]
    with storescp(out, PEER_AE, *tls) as port:
        yield port, out


def _dest(port: int, tls: ClientTls) -> DicomDestination:
    return DicomDestination(name="pacs", ae_title=PEER_AE, host="127.0.0.1", port=port, timeout_seconds=10, tls=tls)


def test_sr_reaches_storescp_over_tls(storescp_tls: tuple[int, Path], pki: Pki, tmp_path: Path) -> None:
    port, out = storescp_tls
    client = ClientTls(ca_bundle=pki.ca, certificate=pki.client.certificate, private_key=pki.client.private_key)
    store_file(new_copy(CR_JLSL, tmp_path / "a.dcm"), _dest(port, client), "PREDICTD")
    (received,) = wait_until(lambda: list(out.iterdir()), timeout=10, what="file in storescp's folder")
    assert received.stat().st_size > 0


def test_an_untrusted_server_certificate_is_a_permanent_error(
    storescp_tls: tuple[int, Path], pki: Pki, tmp_path: Path
) -> None:
    port, out = storescp_tls
    wrong_ca = ClientTls(ca_bundle=pki.rogue_ca, certificate=pki.client.certificate, private_key=pki.client.private_key)
    with pytest.raises(SendError, match="certificate not trusted") as caught:
        store_file(new_copy(CR_JLSL, tmp_path / "a.dcm"), _dest(port, wrong_ca), "PREDICTD")
    assert not caught.value.retryable
    assert list(out.iterdir()) == []


def test_without_our_client_certificate_the_peer_refuses(
    storescp_tls: tuple[int, Path], pki: Pki, tmp_path: Path
) -> None:
    port, out = storescp_tls
    with pytest.raises(SendError) as caught:
        store_file(new_copy(CR_JLSL, tmp_path / "a.dcm"), _dest(port, ClientTls(ca_bundle=pki.ca)), "PREDICTD")
    assert caught.value.retryable  # the peer may be told to trust us; the message says what to check
    assert list(out.iterdir()) == []


# --- contexts -------------------------------------------------------------------------------------------------------


def test_contexts_are_bcp195(pki: Pki) -> None:
    server = server_context(
        ReceiveTls(certificate=pki.server.certificate, private_key=pki.server.private_key, ca_bundle=pki.ca)
    )
    client = client_context(ClientTls(ca_bundle=pki.ca), "t")
    for ctx in (server, client):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        names = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
        assert names and all("GCM" in n or "CHACHA20" in n for n in names), names
    assert server.verify_mode == ssl.CERT_REQUIRED


def test_a_missing_certificate_file_is_one_line_naming_the_setting(pki: Pki, tmp_path: Path) -> None:
    tls = ReceiveTls(certificate=tmp_path / "nope.crt", private_key=pki.server.private_key, ca_bundle=pki.ca)
    with pytest.raises(TlsConfigError, match=r"^receive\.tls: no such file .*nope\.crt$"):
        server_context(tls)


def test_tls_associations_are_audited_with_the_certificates_name(pki: Pki, tmp_path: Path) -> None:
    from predictd.daemon import arrivals, audit
    from predictd.daemon.audit import Auditor
    from predictd.daemon.db import Database
    from predictd.daemon.listeners import Receiver
    from predictd.daemon.spool import Spool

    db = Database(f"sqlite:///{tmp_path / 'q.db'}")
    db.upgrade()
    auditor = Auditor(db)
    tls = ReceiveTls(
        port=free_port(), certificate=pki.server.certificate, private_key=pki.server.private_key, ca_bundle=pki.ca
    )
    settings = ReceiveSettings(ae_title=CALLED, host="127.0.0.1", port=free_port(), tls=tls, min_free_bytes=0)
    spool = Spool(tmp_path / "spool")
    receiver = Receiver(
        settings, spool, record=lambda i: arrivals.note_instance(db, i, auditor=auditor), auditor=auditor
    )
    receiver.start()
    try:
        trusted = ["+tls", str(pki.client.private_key), str(pki.client.certificate), "+cf", str(pki.ca)]
        assert storescu_tls(tls.port, new_copy(CR_JLSL, tmp_path / "a.dcm"), *trusted).returncode == 0
        rogue = ["+tls", str(pki.rogue.private_key), str(pki.rogue.certificate), "+cf", str(pki.ca)]
        assert storescu_tls(tls.port, new_copy(CR_JLSL, tmp_path / "b.dcm"), *rogue).returncode != 0
        wait_until(lambda: len(audit.recent(db, kind="association")) == 2, timeout=10, what="both audited")
    finally:
        receiver.stop()
    refused, accepted = audit.recent(db, kind="association")
    assert accepted["outcome"] == "success" and accepted["actor"] == f"{CALLING} (MODALITY1)"
    assert accepted["detail"] == {"transport": "tls", "tls_peer": "MODALITY1"}
    assert refused["outcome"] == "refused" and refused["detail"]["transport"] == "tls"
    assert refused["detail"]["reason"] == "certificate not trusted: unable to get local issuer certificate"
    assert [r["actor"] for r in audit.recent(db, kind="instance_received")] == [CALLING]


def test_a_refused_handshake_leaves_no_connection_open(tls_receiver: Running, pki: Pki, tmp_path: Path) -> None:
    """The caller sees the connection closed at once, not held until its own timeout."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pki.ca)  # trusts the server, presents no certificate
    port = tls_receiver.receiver.tls_port or 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
                assert conn.recv(1) == b""  # TLS 1.3: the refusal arrives after the client's side of the handshake
        except (ssl.SSLError, ConnectionResetError):
            pass  # TLS 1.2, or the alert read as an error: refused either way
