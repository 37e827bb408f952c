"""The audit trail on SQLite and PostgreSQL: append-only, and a record for every association, instance, document
sent and operator action, without patient values; its syslog copy as RFC 5424 over UDP and TCP."""

from __future__ import annotations

import json
import re
import socket
import threading
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError
from typer.testing import CliRunner

from predictd.daemon import audit
from predictd.daemon.audit import AuditKind, Auditor, Outcome
from predictd.daemon.cli import app
from predictd.daemon.config import ReceiveSettings, SyslogSettings
from predictd.daemon.db import Database
from predictd.daemon.listeners import Receiver
from predictd.daemon.spool import Spool
from predictd.daemon.syslog import SyslogSender
from tests.integration.pipeline_helpers import context, copy_as_new_study, drain, receive_file
from tests.integration.receive_helpers import c_store
from tests.integration.receivers import CALLED, CALLING
from tests.support import CR_JLSL, free_port, new_copy

PATIENT_VALUES = ("Zoë^Auditée", "PID-AUDIT-77", "ACC-AUDIT-9", "19491231")


def _patient_file(tmp_path: Path) -> Path:
    return new_copy(
        CR_JLSL,
        tmp_path / "patient.dcm",
        PatientName=PATIENT_VALUES[0],
        PatientID=PATIENT_VALUES[1],
        AccessionNumber=PATIENT_VALUES[2],
        PatientBirthDate=PATIENT_VALUES[3],
    )


def _no_patient_values(rows: list[dict[str, object]]) -> None:
    dumped = json.dumps(rows, default=str)
    for value in PATIENT_VALUES:
        assert value not in dumped


def test_config_loads_and_service_events_keep_hashes_not_values(db: Database, tmp_path: Path) -> None:
    config = tmp_path / "p.toml"
    config.write_text(
        '[[send.destinations]]\ntype = "stow"\nname = "w"\nurl = "https://x/dicom-web"\npassword = "pw-9"\n'
    )
    auditor = Auditor(db)
    auditor.record(audit.config_loaded(config, '{"password": "pw-9"}'))
    auditor.record(audit.service("started", port=11112, tls_port=None))
    service, loaded = audit.recent(db)
    assert (loaded["kind"], service["kind"]) == ("config_loaded", "service")
    assert len(loaded["detail"]["file_sha256"]) == 64 and len(loaded["detail"]["settings_sha256"]) == 64
    assert loaded["detail"]["path"] == str(config) and not loaded["detail"]["reload"]
    assert "pw-9" not in json.dumps([loaded, service])
    assert service["detail"] == {"event": "started", "port": 11112, "tls_port": None}


def test_the_table_refuses_updates_and_deletes(db: Database) -> None:
    Auditor(db).record(audit.operator_action("queue retry", study_uid="1.2.3"))
    for statement in ("UPDATE audit_events SET actor = 'someone else'", "DELETE FROM audit_events"):
        with pytest.raises(DatabaseError, match="append-only"), db.connection() as conn:
            conn.execute(text(statement))
    (row,) = audit.recent(db)
    assert row["kind"] == "operator_action" and row["study_uid"] == "1.2.3" and row["actor"]


def test_associations_and_instances_are_audited(db: Database, tmp_path: Path) -> None:
    from predictd.daemon import arrivals

    auditor = Auditor(db)
    settings = ReceiveSettings(
        ae_title=CALLED, host="127.0.0.1", port=free_port(), allowed_calling_aets=[CALLING], min_free_bytes=0
    )
    receiver = Receiver(
        settings,
        Spool(tmp_path / "spool"),
        record=lambda i: arrivals.note_instance(db, i, auditor=auditor),
        auditor=auditor,
    )
    receiver.start()
    try:
        image = _patient_file(tmp_path)
        assert c_store(receiver.port, [image, image]) == [0x0000, 0x0000]  # the second is a repeat
        with pytest.raises(AssertionError, match="not established"):
            c_store(receiver.port, [image], calling="STRANGER")
    finally:
        receiver.stop()
    rows = audit.recent(db)
    _no_patient_values(rows)
    sop_uid = str(pydicom.dcmread(image, stop_before_pixels=True).SOPInstanceUID)
    instances = [r for r in rows if r["kind"] == AuditKind.INSTANCE_RECEIVED]
    assert [r["detail"]["sop_instance_uid"] for r in instances] == [sop_uid, sop_uid]
    assert [r["detail"].get("repeat", False) for r in instances] == [True, False]  # newest first
    assert {r["actor"] for r in instances} == {CALLING}
    associations = [(r["actor"], r["outcome"], r["peer"]) for r in rows if r["kind"] == AuditKind.ASSOCIATION]
    assert (CALLING, Outcome.SUCCESS, "127.0.0.1") in associations
    refused = [r for r in rows if r["kind"] == AuditKind.ASSOCIATION and r["outcome"] == Outcome.REFUSED]
    assert [r["actor"] for r in refused] == ["STRANGER"]
    assert "allowed_calling_aets" in refused[0]["detail"]["reason"]
    assert all(r["detail"]["transport"] == "plain" for r in rows if r["kind"] == AuditKind.ASSOCIATION)


def test_documents_sent_and_operator_actions_are_audited(db: Database, tmp_path: Path) -> None:
    ctx = context(tmp_path, db)
    stored = receive_file(ctx, copy_as_new_study(_patient_file(tmp_path), tmp_path / "hip.dcm"))
    drain(ctx)
    sent = [r for r in audit.recent(db) if r["kind"] == AuditKind.DOCUMENT_SENT]
    assert [(r["peer"], r["study_uid"], r["detail"]["document"]) for r in sent] == [
        ("outbox-folder", stored.study_uid, "sr")
    ]
    config = tmp_path / "predictd.toml"
    config.write_text(f'[database]\nurl = "{db.url}"\n')
    runner = CliRunner()
    assert runner.invoke(app, ["--config", str(config), "queue", "retry", stored.study_uid]).exit_code == 0
    assert runner.invoke(app, ["--config", str(config), "queue", "retry", stored.study_uid]).exit_code == 1
    actions = [r for r in audit.recent(db) if r["kind"] == AuditKind.OPERATOR_ACTION]
    assert [(r["detail"]["command"], r["outcome"]) for r in actions] == [
        ("queue retry", Outcome.REFUSED),  # newest first: the second retry found the study already queued
        ("queue retry", Outcome.SUCCESS),
    ]
    assert actions[1]["detail"]["run_no"] == 2 and actions[0]["detail"]["reason"]
    assert all(r["actor"] == audit.os_user() and r["study_uid"] == stored.study_uid for r in actions)
    result = runner.invoke(app, ["--config", str(config), "audit", "ls", "--json", "--kind", "operator_action"])
    assert result.exit_code == 0 and len(json.loads(result.output)) == 2
    _no_patient_values(audit.recent(db))


# --- syslog -----------------------------------------------------------------------------------------------------

RFC5424 = re.compile(
    r"^<(?P<pri>\d{1,3})>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (?P<host>\S+) (?P<app>\S+) "
    r"(?P<procid>\S+) (?P<msgid>\S+) - (?P<msg>\{.*\})$"
)


def test_syslog_udp_message_is_rfc5424(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    db.upgrade()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(5)
        port = int(collector.getsockname()[1])
        sender = SyslogSender(SyslogSettings(host="127.0.0.1", port=port, protocol="udp"))
        Auditor(db, sender, source="host-1:4242").record(audit.operator_action("queue cancel", study_uid="1.2.3"))
        message = collector.recv(65535).decode("utf-8")
    match = RFC5424.match(message)
    assert match, message
    assert int(match["pri"]) == 13 * 8 + 5  # log audit, notice
    assert (match["app"], match["procid"], match["msgid"]) == ("predictd", "4242", "operator_action")
    body = json.loads(match["msg"])
    assert body["study_uid"] == "1.2.3" and body["detail"]["command"] == "queue cancel"
    assert len(audit.recent(db)) == 1  # the table keeps it too


def test_syslog_tcp_frames_by_octet_count_and_survives_a_dead_collector(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    db.upgrade()
    server = socket.create_server(("127.0.0.1", 0))
    port = int(server.getsockname()[1])
    chunks: list[bytes] = []

    def accept() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65535):
                chunks.append(data)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    sender = SyslogSender(SyslogSettings(host="127.0.0.1", port=port, protocol="tcp"))
    auditor = Auditor(db, sender)
    auditor.record(audit.operator_action("queue retry", study_uid="1.2.3"))
    auditor.record(audit.operator_action("queue cancel", study_uid="1.2.3"))
    sender.close()
    thread.join(5)
    server.close()
    stream = b"".join(chunks)
    messages = []
    while stream:
        length, _, rest = stream.partition(b" ")
        messages.append(rest[: int(length)])
        stream = rest[int(length) :]
    assert [RFC5424.match(m.decode())["msgid"] for m in messages] == ["operator_action", "operator_action"]  # type: ignore[index]
    auditor.record(audit.operator_action("queue retry", study_uid="1.2.4"))  # nobody listens now: logged, not raised
    assert len(audit.recent(db)) == 3


def test_syslog_over_tls_reaches_a_collector_that_trusts_nobody_else(sqlite_url: str, tmp_path: Path) -> None:
    """RFC 5425: the same octet-counted frames inside TLS; the collector requires our client certificate."""
    import ssl

    from predictd.daemon.config_base import ClientTls
    from tests.support.certs import make_pki

    pki = make_pki(tmp_path / "pki")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server.certificate, pki.server.private_key)
    context.load_verify_locations(pki.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    db = Database(sqlite_url)
    db.upgrade()
    server = socket.create_server(("127.0.0.1", 0))
    port = int(server.getsockname()[1])
    received: list[bytes] = []

    def accept() -> None:
        conn, _ = server.accept()
        with context.wrap_socket(conn, server_side=True) as tls_conn:
            while data := tls_conn.recv(65535):
                received.append(data)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    client = ClientTls(ca_bundle=pki.ca, certificate=pki.client.certificate, private_key=pki.client.private_key)
    sender = SyslogSender(SyslogSettings(host="127.0.0.1", port=port, protocol="tls", tls=client))
    Auditor(db, sender).record(audit.operator_action("queue retry", study_uid="1.2.3"))
    sender.close()
    thread.join(5)
    server.close()
    length, _, message = b"".join(received).partition(b" ")
    assert int(length) == len(message) and RFC5424.match(message.decode())
