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
- ``PRD-RPT-TEXT`` "Preliminary report text (AI-generated)", the concept name of the prepopulated report text.

Values longer than 16 characters are written as Long Code Value (0008,0119); highdicom does that by itself. The
scheme version is declared once, in the identification item, not in each code: highdicom's content-item search
(``find_content_items``) drops Coding Scheme Version when comparing names, so versioned codes could not be found by
the very concepts this module hands out.

Why private: predictd's tasks and classes (e.g. "total hip arthroplasty" as an *AI classification output*) have no
verified code here, and inventing one in SNOMED CT, DCM or RadLex would put a false statement into the patient's record.
Public concepts are used only where pydicom's code dictionary (the DICOM standard's own tables) provides them, or, for
TID 1500's "Qualitative Evaluations" container, where the template itself defines the code.
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from models.card import ModelCard
from models.prediction import Prediction

SCHEME = "99PREDICTD"
SCHEME_VERSION = "1"
SCHEME_NAME = "predictd local concepts"
_MAX_MEANING = 64
"""Code Meaning is LO: at most 64 characters."""

INDETERMINATE = CodedConcept("PRD-INDET", SCHEME, "Indeterminate (no class reached its threshold)")
REPORT_TEXT = CodedConcept("PRD-RPT-TEXT", SCHEME, "Preliminary report text (AI-generated)")

PROBABILITY = CodedConcept.from_code(codes.DCM.Probability)
"""(122157, DCM, "Probability"): concept name of the probability measurement."""
NO_UNITS = CodedConcept.from_code(codes.UCUM.NoUnits)
"""(1, UCUM, "no units"): a probability is a dimensionless number in [0, 1]."""
PROCEDURE_REPORTED = CodedConcept.from_code(codes.cid100.XRUnspecifiedBodyRegion)
"""(43468-8, LN, "XR unspecified body region"), from CID 100: the models read projection radiographs of any region."""
LATERALITY = CodedConcept.from_code(codes.SCT.Laterality)
_SIDES = {"R": CodedConcept.from_code(codes.SCT.Right), "L": CodedConcept.from_code(codes.SCT.Left)}
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


def coding_scheme_item() -> CodingSchemeIdentificationItem:
    """The Coding Scheme Identification Sequence item that declares ``99PREDICTD`` in each SR (PS3.3 C.12.1)."""
    return CodingSchemeIdentificationItem(
        designator=SCHEME,
        name=SCHEME_NAME,
        version=SCHEME_VERSION,
        responsible_organization="predictd project",
    )
