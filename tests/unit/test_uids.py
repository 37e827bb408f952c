"""reporting.uids: a retried run must map to the same SR UID, and every UID must be a valid 2.25 UID."""

from __future__ import annotations

import re
import uuid

import pytest

from predictd.reporting import uids

STUDY = "1.3.6.1.4.1.5962.1.2.10.20040826185059.5457"
_UID_SYNTAX = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _assert_valid(uid: str) -> None:
    assert uid.startswith("2.25."), uid
    assert len(uid) <= 64, uid
    assert _UID_SYNTAX.match(uid), uid
    # 2.25 UIDs are UUIDs written as an integer: it must parse as one (RFC 9562 variant, version 8).
    as_uuid = uuid.UUID(int=int(uid.removeprefix("2.25.")))
    assert as_uuid.variant == uuid.RFC_4122
    assert as_uuid.version == 8


def test_sr_instance_uid_is_deterministic() -> None:
    assert uids.sr_instance_uid(STUDY, 1, "hip@1.0") == uids.sr_instance_uid(STUDY, 1, "hip@1.0")


@pytest.mark.parametrize(
    ("study", "run_no", "versions"),
    [
        (STUDY, 2, "hip@1.0"),
        (STUDY, 1, "hip@1.1"),
        (STUDY, 1, "hip@1.0,knee@0.3"),
        (STUDY + ".1", 1, "hip@1.0"),
    ],
)
def test_sr_instance_uid_changes_with_any_input(study: str, run_no: int, versions: str) -> None:
    assert uids.sr_instance_uid(study, run_no, versions) != uids.sr_instance_uid(STUDY, 1, "hip@1.0")


def test_inputs_cannot_shift_into_each_other() -> None:
    # A naive "study.run.versions" join would make these two equal.
    assert uids.sr_instance_uid("1.2.3", 45, "x") != uids.sr_instance_uid("1.2.34", 5, "x")


def test_series_uid_is_per_study_and_differs_from_instance_uid() -> None:
    series = uids.sr_series_uid(STUDY)
    assert series == uids.sr_series_uid(STUDY)
    assert series != uids.sr_series_uid(STUDY + ".1")
    assert series != uids.sr_instance_uid(STUDY, 1, "")


def test_device_uid_is_constant() -> None:
    assert uids.device_uid() == uids.device_uid()
    assert uids.device_uid() not in {uids.sr_series_uid(STUDY), uids.sr_instance_uid(STUDY, 1, "")}


@pytest.mark.parametrize("run_no", [0, 1, 7, 10**6])
def test_uid_syntax(run_no: int) -> None:
    for uid in (
        uids.sr_instance_uid(STUDY, run_no, "hip_hardware_resnet@2025.06.01+abcdef"),
        uids.sr_series_uid(STUDY),
        uids.device_uid(),
        uids.tracking_uid(uids.sr_instance_uid(STUDY, run_no, ""), "group-1"),
    ):
        _assert_valid(uid)


def test_many_uids_are_distinct_and_valid() -> None:
    made = {uids.sr_instance_uid(STUDY, n, "m@1") for n in range(2000)}
    assert len(made) == 2000
    for uid in made:
        _assert_valid(uid)


def test_key_image_uids_are_deterministic_and_distinct() -> None:
    sr = uids.sr_instance_uid(STUDY, 1, "hip@1.0")
    right = uids.finding_key("hip@1.0", "1.2.3", "R")
    assert uids.key_image_uid(sr, right) == uids.key_image_uid(sr, right)
    made = {
        uids.key_image_uid(sr, right),
        uids.key_image_uid(sr, uids.finding_key("hip@1.0", "1.2.3", "L")),
        uids.key_image_uid(sr, uids.finding_key("hip@1.0", "1.2.3", None, "image-left")),
        uids.key_image_uid(sr, uids.finding_key("hip@1.0", "1.2.3", None, "image-right")),
        uids.key_image_uid(uids.sr_instance_uid(STUDY, 2, "hip@1.0"), right),
        uids.key_image_series_uid(STUDY),
        uids.sr_series_uid(STUDY),
        uids.tracking_uid(sr, right),
    }
    assert len(made) == 8
    assert uids.key_image_series_uid(STUDY) == uids.key_image_series_uid(STUDY)
    for uid in made:
        _assert_valid(uid)


def test_finding_key_keeps_whole_image_keys_unchanged() -> None:
    # Tracking UIDs of SRs sent before image halves existed are derived from keys without a region.
    assert uids.finding_key("hip@1.0", "1.2.3", "R") == "hip@1.0|1.2.3|R"
    assert uids.finding_key("hip@1.0", "1.2.3", None) == "hip@1.0|1.2.3|-"
    assert uids.finding_key("hip@1.0", "1.2.3", None, "image-left") == "hip@1.0|1.2.3|-|image-left"
