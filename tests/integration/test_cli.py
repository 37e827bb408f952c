"""The admin CLI against a real database: JSON for scripts, exit codes and messages for people."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
from typer.testing import CliRunner

from predictd.daemon.cli import app
from predictd.daemon.config import load_settings
from predictd.daemon.db import Database
from predictd.daemon.listeners import Receiver
from predictd.daemon.spool import Spool
from tests.integration.pipeline_helpers import context, copy_as_new_study, drain, receive_file
from tests.support import CR_JLSL, free_port

runner = CliRunner()


def write_config(tmp_path: Path, url: str, port: int = 11112) -> Path:
    config = tmp_path / "predictd.toml"
    config.write_text(f'[database]\nurl = "{url}"\n[receive]\nport = {port}\nae_title = "CLITEST"\n')
    return config


def invoke(config: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["--config", str(config), *args])
    return result.exit_code, result.output


def test_queue_commands(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'q.db'}")
    db.upgrade()
    ctx = context(tmp_path, db)
    stored = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm"))
    drain(ctx)
    config = write_config(tmp_path, db.url)

    code, out = invoke(config, "queue", "ls", "--json")
    assert code == 0
    (row,) = json.loads(out)
    assert (row["study_uid"], row["state"], row["instances"]) == (stored.study_uid, "done", 1)

    code, out = invoke(config, "queue", "ls", "--state", "failed", "--json")
    assert (code, json.loads(out)) == (0, [])

    code, out = invoke(config, "queue", "show", stored.study_uid, "--json")
    detail = json.loads(out)
    assert detail["runs"][0]["deliveries"][0]["state"] == "sent"
    moves = [e["to"] for e in detail["events"] if e["kind"] == "transition"]
    assert moves == ["receiving", "ready", "classified", "reported", "done"]
    claims = [e["event"] for e in detail["events"] if e["kind"] == "claimed"]
    assert claims == [f"claimed by test-worker for {stage}" for stage in ("classify", "report", "send")]

    code, out = invoke(config, "queue", "show", stored.study_uid)
    assert code == 0 and "deliveries" in out and stored.sop_instance_uid[:20] in out
    assert "claimed" in out and "history" in out

    code, out = invoke(config, "queue", "retry", stored.study_uid)
    assert code == 0 and "run 2" in out
    code, out = invoke(config, "queue", "stats", "--json")
    assert json.loads(out)["studies"]["ready"] == 1
    code, out = invoke(config, "queue", "cancel", stored.study_uid)
    assert code == 0
    code, out = invoke(config, "queue", "cancel", stored.study_uid)
    assert code == 1 and "not allowed" in out
    code, out = invoke(config, "queue", "show", "1.2.3.999")
    assert code == 1 and "no study" in out


def test_commands_refuse_a_database_not_at_head(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'empty.db'}")
    code, out = invoke(config, "queue", "ls")
    assert code == 2 and "predictd db upgrade" in out
    code, out = invoke(config, "serve")  # the daemon refuses too, before it listens
    assert code == 2 and "predictd db upgrade" in out
    code, out = invoke(config, "db", "upgrade")
    assert code == 0
    code, out = invoke(config, "queue", "ls", "--json")
    assert (code, json.loads(out)) == (0, [])


def test_echo_reaches_a_running_receiver(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'q.db'}", port)
    settings = load_settings(config)
    receiver = Receiver(settings.receive, Spool(tmp_path / "spool"), record=lambda inst: True)
    receiver.start()
    try:
        code, out = invoke(config, "echo", "127.0.0.1", str(port), "--aec", "CLITEST")
        assert code == 0 and "0x0000" in out
    finally:
        receiver.stop()
    code, out = invoke(config, "echo", "127.0.0.1", str(port), "--aec", "CLITEST")
    assert code == 1 and "error" in out.lower()


def test_models_commands(tmp_path: Path) -> None:
    from PIL import Image

    from predictd.models.demo import write_model
    from tests.integration.pipeline_helpers import LABELS

    write_model(tmp_path / "models" / "tiny", name="tiny", task="hip_hardware", labels=LABELS)
    config = tmp_path / "predictd.toml"
    config.write_text('[models]\ndir = "models"\ndevice = "cpu"\n')
    code, out = invoke(config, "models", "ls", "--json")
    assert code == 0 and [m["name"] for m in json.loads(out)] == ["tiny"]
    png = tmp_path / "heat.png"
    code, out = invoke(config, "models", "explain", str(CR_JLSL), "--model", "tiny", "--out", str(png))
    assert code == 0, out
    header = pydicom.dcmread(CR_JLSL, stop_before_pixels=True)
    with Image.open(png) as image:
        assert image.size == (header.Columns, header.Rows)  # the radiograph's own geometry
    write_model(tmp_path / "models" / "tiny_copy", name="tiny", task="hip_hardware", labels=LABELS)
    code, out = invoke(config, "models", "ls")
    assert code == 1 and "'tiny' is used by both" in out and "tiny_copy" in out and "rename one" in out
    code, out = invoke(config, "models", "catalog", "--json")
    tasks = {row["task"] for row in json.loads(out)}
    assert {"hip_hardware", "body_part", "shoulder_implant_manufacturer", "hip_arthroplasty"} <= tasks
