"""What an operator meets at the command line: `config check`, one-line errors, `queue ls` filters, `echo`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from predictd.daemon import arrivals
from predictd.daemon.cli import app
from predictd.daemon.config import load_settings
from predictd.daemon.db import Database
from predictd.daemon.listeners import Receiver
from predictd.daemon.receive import StoredInstance
from predictd.daemon.spool import Spool
from tests.support import free_port
from tests.support.certs import make_pki

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_config_check_prints_the_effective_settings_with_secrets_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "predictd.toml"
    config.write_text(
        '[database]\nurl = "postgresql+psycopg://predictd:db-secret@db.example:5432/predictd"\n'
        '[[send.destinations]]\ntype = "stow"\nname = "web"\nurl = "https://pacs.example/dicom-web"\n'
        'username = "u"\npassword = "stow-secret"\nheaders = { Authorization = "Bearer token-secret" }\n'
    )
    monkeypatch.setenv("PREDICTD_RECEIVE__PORT", "11999")
    code, out = invoke("config", "check", "--config", str(config))
    assert code == 0, out
    effective = json.loads(out[: out.rindex("}") + 1])
    assert effective["receive"]["port"] == 11999  # the environment's override applied
    assert effective["send"]["destinations"][0]["password"] == "********"
    assert effective["send"]["destinations"][0]["headers"] == {"Authorization": "********"}
    for secret in ("db-secret", "stow-secret", "token-secret"):
        assert secret not in out
    assert "ok:" in out.splitlines()[-1]


def test_config_check_refuses_typos_and_certificates_that_do_not_load(tmp_path: Path) -> None:
    config = tmp_path / "predictd.toml"
    config.write_text("[receive]\nalowed_calling_aets = []\n")
    code, out = invoke("config", "check", "--config", str(config))
    assert code == 2 and out.count("\n") == 1 and "did you mean 'allowed_calling_aets'" in out
    pki = make_pki(tmp_path / "pki")
    config.write_text(
        f'[receive.tls]\ncertificate = "{pki.server.certificate}"\nprivate_key = "{pki.client.private_key}"\n'
        f'ca_bundle = "{pki.ca}"\n'
    )
    code, out = invoke("config", "check", "--config", str(config))
    assert code == 2 and "receive.tls: certificate" in out and "does not load" in out
    config.write_text("[receive]\nplain = false\n")
    code, out = invoke("config", "check", "--config", str(config))
    assert code == 2 and "plain = false needs a [receive.tls] table" in out


def test_no_database_is_named_and_never_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PREDICTD_CONFIG", raising=False)
    code, out = invoke("queue", "ls")
    assert code == 2 and "no database at" in out and "no --config" in out and "predictd db upgrade" in out
    assert not (tmp_path / "var").exists()  # not even the folder
    config = tmp_path / "site.toml"
    config.write_text('[database]\nurl = "sqlite:///state/p.db"\n')
    code, out = invoke("--config", str(config), "audit", "ls")
    assert code == 2 and str(tmp_path / "state" / "p.db") in out and str(config) in out
    assert not (tmp_path / "state").exists()


def _instance(study: str, n: int, patient: str, accession: str) -> StoredInstance:
    return StoredInstance(
        study_uid=study,
        series_uid=f"{study}.1",
        sop_instance_uid=f"{study}.1.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CR" if n % 2 else "DX",
        path=Path("/nonexistent"),
        size_bytes=1,
        calling_ae="MOD",
        patient_id=patient,
        accession_number=accession,
        study_date="20261201",
    )


def test_queue_ls_finds_studies_as_an_administrator_asks(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'q.db'}")
    db.upgrade()
    day = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    for n, (patient, accession) in enumerate([("P1", "A1"), ("P1", "A2"), ("P2", "A3")], start=1):
        at = day + timedelta(days=n - 1)
        arrivals.note_instance(db, _instance(f"1.2.826.0.1.{n}", n, patient, accession), now=at)
    config = tmp_path / "p.toml"
    config.write_text(f'[database]\nurl = "{db.url}"\n')

    def studies(*args: str) -> list[str]:
        code, out = invoke("--config", str(config), "queue", "ls", "--json", *args)
        assert code == 0, out
        return sorted(row["study_uid"] for row in json.loads(out))

    assert studies("--patient-id", "P1") == ["1.2.826.0.1.1", "1.2.826.0.1.2"]
    assert studies("--accession", "A3") == ["1.2.826.0.1.3"]
    assert studies("--modality", "dx") == ["1.2.826.0.1.2"]
    assert studies("--since", "2026-12-02") == ["1.2.826.0.1.2", "1.2.826.0.1.3"]
    assert studies("--since", "2026-12-02", "--until", "2026-12-03") == ["1.2.826.0.1.2"]
    code, out = invoke("--config", str(config), "queue", "ls", "--json")
    assert code == 0 and "P1" not in out and "A1" not in out  # identifiers only when asked for
    _, out = invoke("--config", str(config), "queue", "ls", "--json", "--identifiers", "--accession", "A1")
    (row,) = json.loads(out)
    assert (row["patient_id"], row["accession_number"], row["study_date"]) == ("P1", "A1", "20261201")


def test_echo_defaults_to_our_own_ae_title_on_our_own_port(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "p.toml"
    config.write_text(f'[receive]\nport = {port}\nae_title = "OWNAE"\nhost = "127.0.0.1"\n')
    receiver = Receiver(load_settings(config).receive, Spool(tmp_path / "spool"), record=lambda inst: True)
    receiver.start()
    try:
        code, out = invoke("--config", str(config), "echo")
        assert code == 0 and "(OWNAE): status 0x0000" in out
        code, out = invoke("--config", str(config), "echo", "127.0.0.1", str(port), "--aec", "WRONG")
        assert code == 1 and "\nerror: WRONG@" in out and "rejected the association" in out
    finally:
        receiver.stop()
    code, out = invoke("--config", str(config), "echo", "--destination", "pacs")
    assert code == 1 and "no DICOM destination named 'pacs'" in out


def test_models_explain_with_no_such_model_is_one_line(tmp_path: Path) -> None:
    from predictd.models.demo import write_model
    from tests.integration.pipeline_helpers import LABELS
    from tests.support import CR_JLSL

    write_model(tmp_path / "models" / "tiny", name="tiny", task="hip_hardware", labels=LABELS)
    config = tmp_path / "p.toml"
    config.write_text('[models]\ndir = "models"\ndevice = "cpu"\n')
    out_png = tmp_path / "x.png"
    code, out = invoke("--config", str(config), "models", "explain", str(CR_JLSL), "-m", "nope", "-o", str(out_png))
    assert code == 2 and out.count("\n") == 1 and "no model 'nope'" in out and "tiny" in out
