"""Logs are JSON lines with fixed event names, and keys that could carry PHI are redacted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from predictd.daemon.log import Event, configure_logging, get_logger
from tests.support import REPO

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


STDLIB_AND_WARNINGS = """
import logging, sys, warnings
import pydicom
from predictd.daemon.log import Event, configure_logging, get_logger
configure_logging("INFO", json_output=True)
ds = pydicom.Dataset()
ds.PatientBirthDate = "ZQXDOB1923"  # pydicom warns, quoting the value
logging.getLogger("pynetdicom.acse").warning("peer sent %r", "ZQXNAME^PHI")
warnings.warn("Invalid value for VR PN: 'ZQXWARN'")
try:
    raise ValueError("Unable to convert 'ZQXEXC' to 'DA' object")
except ValueError:
    logging.getLogger("apscheduler").exception("job raised")
    get_logger("t").exception(Event.JOB_FAILED, reason="Unable to convert 'ZQXREASON' to 'DA' object")
"""


def test_library_lines_and_warnings_are_json_and_scrubbed_of_values() -> None:
    done = subprocess.run(
        [sys.executable, "-c", STDLIB_AND_WARNINGS], capture_output=True, text=True, cwd=REPO, timeout=60, check=True
    )
    lines = done.stderr.strip().splitlines()
    records = [json.loads(line) for line in lines]  # every line is JSON, a library's or a warning's included
    assert len(records) >= 5, done.stderr
    assert "ZQX" not in done.stderr, done.stderr
    loggers = {r.get("logger") for r in records}
    assert {"pynetdicom.acse", "py.warnings", "apscheduler"} <= loggers, loggers
    reason = next(r for r in records if r["event"] == "job_failed")["reason"]
    assert reason == "Unable to convert '…' to 'DA' object"  # the VR stays: it says what was wrong
    assert any("ValueError" in r.get("exception", "") for r in records)
