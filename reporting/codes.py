"""Coded concepts used in predictd's SRs, and the private coding scheme behind the ones no public scheme has.

Private coding scheme
---------------------
Designator ``99PREDICTD``, version ``1`` (:data:`SCHEME_VERSION`), responsible organisation: the predictd project.
It is a *local* scheme in the sense of DICOM PS3.3 8.2 (designators starting with "99" are for private use), and
it is identified in every SR through the Coding Scheme Identification Sequence (:func:`coding_scheme_item`). It holds:

- task concepts: ``PRD-TASK-<task>``, meaning "<Task> classification" (the concept name of a qualitative evaluation);
- label concepts: ``PRD-LBL-<task>.<label key>``, meaning the label's display name, used when the model card does not
  carry a code for that label (the task is part of the value because label keys are only unique within a card);
- ``PRD-INDET`` "Indeterminate (no class reached its threshold)";
- ``PRD-NOT-ASSESSED`` "Not assessed (image unlike the model's training images)": the value of a qualitative
  evaluation whose image the model's domain gate refused (not a finding), and ``PRD-NA-REASON`` "Reason not
  assessed", the concept name of the TEXT item that says why, with the gate's score; ``PRD-AI-ASSESSMENT`` "AI
  assessment of the study", the concept name whose value is "not assessed" when no installed model applied;
- ``PRD-RPT-TEXT`` "Preliminary report text (AI-generated)", the concept name of the prepopulated report text;
- ``PRD-SITE-IMAGED`` "Imaged region (not specified by the model)", the anatomic location of a finding site whose
  model is not restricted to one body part (its card lists none) but whose side is known: TID 1501 carries laterality
  only as a modifier of a finding site, and naming a real anatomic structure there would be a guess.

Values longer than 16 characters are written as Long Code Value (0008,0119); highdicom does that by itself. The
scheme version is declared once, in the identification item, not in each code: highdicom's content-item search
(``find_content_items``) drops Coding Scheme Version when comparing names, so versioned codes could not be found by
the very concepts this module hands out.

Why private: predictd's tasks and classes (e.g. "total hip arthroplasty" as an *AI classification output*) have no
verified code here, and inventing one in SNOMED CT, DCM or RadLex would put a false statement into the patient's record.
Public concepts are used only where pydicom's code dictionary (the DICOM standard's own tables) provides them, or, for
TID 1500's "Qualitative Evaluations" container, where the template itself defines the code. Each public constant below
says which context group (CID) of pydicom.sr.codedict it comes from (pydicom 3.0); where it is looked up through
that CID (``codes.cid4031.HipJoint``), a concept missing from the group fails at import rather than go out unchecked.
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from predictd.models.card import ModelCard
from predictd.models.prediction import Prediction

SCHEME = "99PREDICTD"
SCHEME_VERSION = "1"
SCHEME_NAME = "predictd local concepts"
_MAX_MEANING = 64
"""Code Meaning is LO: at most 64 characters."""

INDETERMINATE = CodedConcept("PRD-INDET", SCHEME, "Indeterminate (no class reached its threshold)")
NOT_ASSESSED = CodedConcept("PRD-NOT-ASSESSED", SCHEME, "Not assessed (image unlike the model's training images)")
NOT_ASSESSED_REASON = CodedConcept("PRD-NA-REASON", SCHEME, "Reason not assessed")
AI_ASSESSMENT = CodedConcept("PRD-AI-ASSESSMENT", SCHEME, "AI assessment of the study")
REPORT_TEXT = CodedConcept("PRD-RPT-TEXT", SCHEME, "Preliminary report text (AI-generated)")
SITE_IMAGED = CodedConcept("PRD-SITE-IMAGED", SCHEME, "Imaged region (not specified by the model)")

PROBABILITY = CodedConcept.from_code(codes.DCM.Probability)
"""(122157, DCM, "Probability"): concept name of the probability measurement."""
NO_UNITS = CodedConcept.from_code(codes.UCUM.NoUnits)
"""(1, UCUM, "no units"): a probability is a dimensionless number in [0, 1]."""
PROCEDURE_REPORTED = CodedConcept.from_code(codes.cid100.XRUnspecifiedBodyRegion)
"""(43468-8, LN, "XR unspecified body region"), from CID 100: the models read projection radiographs of any region."""
LATERALITY = CodedConcept.from_code(codes.SCT.Laterality)
"""(272741003, SCT, "Laterality"), in CID 210; the concept name of a finding site's laterality modifier."""
_SIDES = {"R": CodedConcept.from_code(codes.cid244.Right), "L": CodedConcept.from_code(codes.cid244.Left)}
"""(24028007, SCT, "Right") and (7771000, SCT, "Left"), from CID 244 "Laterality"."""

_ANATOMY: dict[str, Code] = {
    "shoulder": codes.cid4031.Shoulder,  # (16982005, SCT, "Shoulder"), CID 4031
    "elbow": codes.cid4031.ElbowJoint,  # (16953009, SCT, "Elbow joint"), CID 4031
    "forearm_wrist_hand": codes.cid4031.UpperLimb,  # (53120007, SCT, "Upper limb"), CID 4031
    "hip_pelvis": codes.cid4031.HipJoint,  # (24136001, SCT, "Hip joint"), CID 4031
    "femur": codes.cid4031.Femur,  # (71341001, SCT, "Femur"), CID 4031
    "knee": codes.cid4031.Knee,  # (72696002, SCT, "Knee"), CID 4031
    "leg_ankle_foot": codes.cid4031.LowerLimb,  # (61685007, SCT, "Lower limb"), CID 4031
    "spine": codes.cid4031.Spine,  # (421060004, SCT, "Spine"), CID 4031
    "chest": codes.cid4031.Chest,  # (816094009, SCT, "Chest"), CID 4031
}
"""Anatomic location of a finding site per canonical body part (models.body_part.BODY_PARTS), all from CID 4031
"Common Anatomic Regions" in pydicom's code dictionary (all but Chest are in CID 4 "Anatomic Region" too).
"hip_pelvis" is the hip joint, not the pelvis: every hip model reads (and reports) a hip. Body parts that group
several regions get the limb that holds them all (forearm, wrist and hand → upper limb; lower leg, ankle and foot →
lower limb) rather than one region that might be the wrong one."""

PROCESSING_EQUIPMENT = CodedConcept.from_code(codes.cid7005.ProcessingEquipment)
"""(109102, DCM, "Processing Equipment"), from CID 7005 "Contributing Equipment Purpose of Reference": the purpose of
predictd's Contributing Equipment item. CID 7005 in pydicom's dictionary has no "Processing Algorithm" concept, so
the CID's own term for equipment that processed the images is used rather than a code value from memory."""
BEST_ILLUSTRATION = CodedConcept.from_code(codes.cid7003.BestIllustrationOfFinding)
"""(121080, DCM, "Best illustration of finding"), from CID 7003 "Diagnostic Imaging Report Purpose of Reference":
the concept name of the key image (Grad-CAM overlay) referenced from a finding's measurement group."""
SOURCE_IMAGE_FOR_PROCESSING = CodedConcept.from_code(codes.cid7202.SourceImageForImageProcessingOperation)
"""(121322, DCM, "Source image for image processing operation"), from CID 7202 "Source Image Purpose of Reference":
how a key image's Source Image Sequence names the radiograph it was made from."""
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
"""The concept name TID 1500 itself defines for its document-level "Qualitative Evaluations" container."""


def _meaning(text: str) -> str:
    return text if len(text) <= _MAX_MEANING else text[: _MAX_MEANING - 1] + "…"


def task_concept(task: str) -> CodedConcept:
    """The concept name of a task's qualitative evaluation, e.g. "hip_hardware" → "Hip hardware classification"."""
    words = task.replace("_", " ").replace("-", " ").strip()
    return CodedConcept(f"PRD-TASK-{task}", SCHEME, _meaning(f"{words.capitalize()} classification"))


def label_concept(card: ModelCard, label_key: str) -> CodedConcept:
    """The coded value of a prediction: the card's code when it has one, else the private ``99PREDICTD`` code.

    A card code counts only when value, scheme and meaning are all present; a half-filled code is ignored rather
    than guessed at.
    """
    if label_key == Prediction.INDETERMINATE:
        return INDETERMINATE
    if label_key == Prediction.NOT_ASSESSED:
        return NOT_ASSESSED
    label = card.label(label_key)
    if label.code_value and label.code_scheme and label.code_meaning:
        return CodedConcept(label.code_value, label.code_scheme, _meaning(label.code_meaning))
    return CodedConcept(f"PRD-LBL-{card.task}.{label.key}", SCHEME, _meaning(label.display))


def laterality_concept(laterality: str) -> CodedConcept:
    """SNOMED CT Right / Left for a prediction's "R" / "L"."""
    try:
        return _SIDES[laterality.upper()]
    except KeyError:
        raise ValueError(f"laterality must be 'R' or 'L', not {laterality!r}") from None


def anatomic_site(card: ModelCard) -> CodedConcept | None:
    """The anatomic location of a card's findings: the code of its first (primary) body part, None when it has none.

    A card restricted to several body parts (a hip model that also reads femur views) lists its primary region
    first; the image's own body part is not known to the report.
    """
    for part in card.applies_to.body_parts:
        if part in _ANATOMY:
            return CodedConcept.from_code(_ANATOMY[part])
    return None


def coding_scheme_item() -> CodingSchemeIdentificationItem:
    """The Coding Scheme Identification Sequence item that declares ``99PREDICTD`` in each SR (PS3.3 C.12.1)."""
    return CodingSchemeIdentificationItem(
        designator=SCHEME,
        name=SCHEME_NAME,
        version=SCHEME_VERSION,
        responsible_organization="predictd project",
    )
