"""reporting.codes: label, task and site concepts; public codes only from pydicom's copy of the DICOM tables."""

from __future__ import annotations

import highdicom as hd

from predictd.models.card import Applicability, Label, ModelCard
from predictd.models.prediction import Prediction
from predictd.reporting import codes
from tests.unit.test_sr import ANY_PART, HIP, cid_codes


def test_codes_never_invent_public_codes() -> None:
    concept = codes.label_concept(HIP, "tha")
    assert (concept.scheme_designator, concept.value) == ("99PREDICTD", "PRD-LBL-hip_hardware.tha")
    assert codes.label_concept(HIP, Prediction.INDETERMINATE) == codes.INDETERMINATE
    task = codes.task_concept("hip_hardware")
    assert (task.scheme_designator, task.value, task.meaning) == (
        "99PREDICTD",
        "PRD-TASK-hip_hardware",
        "Hip hardware classification",
    )
    half_coded = ModelCard(name="m", version="1", task="t", arch="x", labels=(Label("a", "A", code_value="123"),))
    assert codes.label_concept(half_coded, "a").scheme_designator == codes.SCHEME


def test_anatomic_sites_are_pydicom_codes() -> None:
    for part in ("shoulder", "elbow", "forearm_wrist_hand", "hip_pelvis", "femur", "knee", "leg_ankle_foot", "spine"):
        card = ModelCard(name="m", version="1", task="t", arch="x", labels=(), applies_to=Applicability((part,)))
        site = codes.anatomic_site(card)
        assert site is not None and site.scheme_designator == "SCT", part
        # every code is one of CID 4031 "Common Anatomic Regions" as pydicom has it: none typed in by hand
        assert any(site == hd.sr.CodedConcept.from_code(c) for c in cid_codes(4031)), part
    shoulder = ModelCard(name="s", version="1", task="t", arch="x", labels=(), applies_to=Applicability(("shoulder",)))
    assert codes.anatomic_site(shoulder) == hd.sr.CodedConcept("16982005", "SCT", "Shoulder")
    assert codes.anatomic_site(ANY_PART) is None
