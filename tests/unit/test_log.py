"""Logs are JSON lines with fixed event names, and keys that could carry PHI are redacted."""

from __future__ import annotations

import json

import pytest

from daemon.log import Event, configure_logging, get_logger

early = get_logger("early")  # created at import, before configure_logging, as every module does


def test_module_level_loggers_follow_the_later_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json_output=True)
    early.info(Event.STUDY_READY, study_uid="1.2.3", patient_name="DOE^JANE", PatientID="12345")
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "study_ready" and line["component"] == "early" and line["study_uid"] == "1.2.3"
    assert line["patient_name"] == "[redacted]" and line["PatientID"] == "[redacted]"


def test_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("WARNING", json_output=True)
    early.info(Event.STUDY_READY)
    early.warning(Event.SEND_FAILED)
    events = [json.loads(x)["event"] for x in capsys.readouterr().err.strip().splitlines()]
    assert events == ["send_failed"]
