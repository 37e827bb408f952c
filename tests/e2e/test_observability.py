"""``predictd serve`` as an IT review meets it: /healthz, /readyz and /metrics scraped over HTTP while a study flows,
the audit trail of what happened, SIGHUP reloads, and one-line errors for a port already in use."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.predictd_proc import PREDICTD, PredictdServer
from tests.support import CR_JLSL, REPO, free_port, new_copy, wait_until

pytestmark = pytest.mark.e2e

PATIENT_NAME = "Observa^Bilité"


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def test_endpoints_and_audit_while_a_study_flows(tmp_path: Path) -> None:
    http = free_port()
    with PredictdServer(tmp_path, extra_toml=f"[http]\nport = {http}\n") as p:
        ready = wait_until(lambda: get(f"http://127.0.0.1:{http}/readyz")[0] == 200, timeout=60, what="ready")
        assert ready
        assert get(f"http://127.0.0.1:{http}/healthz") == (200, b'{"status":"ok"}\n')
        checks = json.loads(get(f"http://127.0.0.1:{http}/readyz")[1])["checks"]
        assert set(checks) == {"database", "receiver", "models", "spool"} and all(c["ok"] for c in checks.values())
        before = samples(http)

        image = new_copy(CR_JLSL, tmp_path / "a.dcm", PatientName=PATIENT_NAME)
        study_uid = str(pydicom.dcmread(image, stop_before_pixels=True).StudyInstanceUID)
        p.storescu(image)
        wait_until(lambda: p.study_state(study_uid) == "done", timeout=90, what="study done")
        after = samples(http)  # the queue's gauges are read from the database at scrape time
        assert value(after, "predictd_studies", state="done") == 1
        stored = ("predictd_instances_received_total", {"result": "stored", "status": "0x0000"})
        assert value(after, stored[0], **stored[1]) == value(before, stored[0], **stored[1]) + 1
        accepted = value(after, "predictd_associations_total", transport="plain", outcome="accepted")
        assert accepted > value(before, "predictd_associations_total", transport="plain", outcome="accepted")
        for stage in ("classify", "report", "send"):
            assert value(after, "predictd_stage_duration_seconds_count", stage=stage) >= 1
            assert value(after, "predictd_stage_outcomes_total", stage=stage, outcome="advanced") >= 1
        assert value(after, "predictd_delivery_attempts_total", destination="outbox-folder", result="sent") >= 1
        assert sum(v for (name, _), v in after.items() if name == "predictd_predictions_total") >= 1
        assert value(after, "predictd_models_loaded") == 1 and value(after, "predictd_spool_free_bytes") > 0
        assert value(after, "process_resident_memory_bytes") > 0

        rows = json.loads(p.cli("audit", "ls", "--json").stdout)
        kinds = {r["kind"] for r in rows}
        assert {"config_loaded", "service", "association", "instance_received", "document_sent"} <= kinds
        assert PATIENT_NAME not in json.dumps(rows)
        assert any(r["kind"] == "document_sent" and r["study_uid"] == study_uid for r in rows)


def test_sighup_applies_what_it_can_and_names_what_needs_a_restart(tmp_path: Path) -> None:
    with PredictdServer(tmp_path) as p:
        assert p.proc is not None
        original = p.config.read_text()
        edited = original.replace('level = "INFO"', 'level = "DEBUG"')
        edited = edited.replace("[receive]", "[receive]\nmax_associations_per_ae = 3", 1)
        p.config.write_text(edited.replace(f"port = {p.port}", f"port = {p.port + 1}", 1))
        p.proc.send_signal(signal.SIGHUP)
        line = wait_until(lambda: _log_event(p, "config_reloaded"), timeout=30, what="config_reloaded")
        assert "log.level" in line["applied"] and "receive.max_associations_per_ae" in line["applied"]
        assert line["needs_restart"] == ["receive.port"]

        p.config.write_text(original + "\n[recieve]\nport = 1\n")  # a typo: refused, the daemon keeps going
        p.proc.send_signal(signal.SIGHUP)
        failed = wait_until(lambda: _log_event(p, "config_reload_failed"), timeout=30, what="reload refused")
        assert "unknown key" in str(failed["reason"])  # the key itself is quoted, and quotes are scrubbed in logs
        assert p.proc.poll() is None and p._echo_ok()  # still serving on the port it started with
        p.config.write_text(original)
        reloads = [r for r in json.loads(p.cli("audit", "ls", "--json").stdout) if r["kind"] == "config_loaded"]
        assert [r["detail"]["reload"] for r in reloads] == [True, False]


def _log_event(p: PredictdServer, name: str) -> dict[str, object] | None:
    for line in p.log_text().splitlines():
        if line.startswith("{") and f'"event": "{name}"' in line:
            return dict(json.loads(line))
    return None


def test_a_port_in_use_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = int(taken.getsockname()[1])
        server = PredictdServer(tmp_path, port=port)
        server.cli("db", "upgrade")
        result = subprocess.run(
            [str(PREDICTD), "--config", str(server.config), "serve"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )
    assert result.returncode == 2
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert f"receive.port {port} on 127.0.0.1 is in use" in line and "PREDICTD_RECEIVE__PORT" in line
    assert "Traceback" not in result.stderr


def test_two_models_of_one_name_stop_serve_with_one_line(tmp_path: Path) -> None:
    import shutil

    server = PredictdServer(tmp_path)
    shutil.copytree(tmp_path / "models" / "tiny_hip", tmp_path / "models" / "tiny_hip_copy")
    server.cli("db", "upgrade")
    result = subprocess.run(
        [str(PREDICTD), "--config", str(server.config), "serve"], capture_output=True, text=True, timeout=180, cwd=REPO
    )
    assert result.returncode == 2
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert "model name 'tiny_hip' is used by both" in line and "tiny_hip_copy" in line
    assert "Traceback" not in result.stderr


def test_sighup_loads_a_newly_enabled_model_without_a_restart(tmp_path: Path) -> None:
    from predictd.models.card import Label
    from predictd.models.demo import write_model

    http = free_port()
    server = PredictdServer(tmp_path, extra_toml=f"[http]\nport = {http}\n")
    labels = (Label("none", "no hardware"), Label("tha", "total hip arthroplasty"))
    write_model(tmp_path / "models" / "tiny_two", name="tiny_two", task="hip_hardware", labels=labels)
    only_one = server.config.read_text().replace("[models]\n", '[models]\nenabled = ["tiny_hip"]\n')
    server.config.write_text(only_one)
    with server as p:
        assert p.proc is not None
        wait_until(lambda: get(f"http://127.0.0.1:{http}/readyz")[0] == 200, timeout=60, what="ready")
        assert value(samples(http), "predictd_models_loaded") == 1
        p.config.write_text(only_one.replace('enabled = ["tiny_hip"]', 'enabled = ["tiny_hip", "tiny_two"]'))
        p.proc.send_signal(signal.SIGHUP)
        line = wait_until(lambda: _log_event(p, "config_reloaded"), timeout=60, what="config_reloaded")
        assert line["applied"] == ["models.enabled"] and line["needs_restart"] == []
        assert value(samples(http), "predictd_models_loaded") == 2
        assert p._echo_ok()
