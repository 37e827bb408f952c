"""Canonical body parts, and the body part a study's DICOM tags claim.

The keys of :data:`BODY_PARTS` are the classes of the body_part (router) model and the values model cards list in
``applies_to.body_parts``. :func:`body_part_from_tags` is the fallback when no body_part model is installed or when it
is indeterminate: header tags are entered by hand or by modality protocols, and in published audits BodyPartExamined and
the descriptions are wrong or missing in roughly 15% of radiograph studies (a chest protocol re-used for a rib series, a
"HIP" study holding a femur, a generic "EXTREMITY"). That is why the body_part model's answer wins whenever it has one
(models.cascade), and why this function answers None rather than guess when the tags disagree.

Mapping decisions (DICOM PS3.16 Annex L defined terms for Body Part Examined, plus common non-standard spellings):

- ``ARM`` is the DICOM term for the *upper* arm, and ``HUMERUS``, ``CLAVICLE``, ``SCAPULA`` map to ``shoulder``: a
  humerus or upper-arm series shows the shoulder joint and its hardware, which is what the shoulder models read.
- ``LEG`` is the DICOM term for the *lower* leg: ``leg_ankle_foot``, as are tibia, fibula, ankle, foot, toes, heel.
- ``THIGH`` (not a DICOM term, but seen) and ``FEMUR`` map to ``femur``; ``FEMORAL`` alone does not (a "femoral neck"
  study is a hip study).
- ``SACRUM``, ``COCCYX`` and the C/T/L/S spine terms map to ``spine``; ``THORAX``, ``RIB``, ``STERNUM`` to ``chest``.
- ``EXTREMITY``, ``WHOLEBODY``, ``ABDOMEN``, ``HEAD``, ``SKULL`` and the like carry no usable body part: they are
  ignored, so a description may still decide (the WG04 RG3 leg image says EXTREMITY and "... distal tibia").
- Phrases that name a view or a measurement rather than a body part ("frog leg" lateral of the hip, "leg length",
  "long leg", "full leg") are removed before matching.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import pydicom

BODY_PARTS: tuple[str, ...] = (
    "shoulder",
    "elbow",
    "forearm_wrist_hand",
    "hip_pelvis",
    "femur",
    "knee",
    "leg_ankle_foot",
    "spine",
    "chest",
)
"""Canonical body-part keys: the body_part model's classes and the values of a card's ``applies_to.body_parts``."""

TAGS: tuple[str, ...] = ("BodyPartExamined", "StudyDescription", "SeriesDescription", "ProtocolName")
"""The tags read, in this order."""

_EXAMINED: Mapping[str, str] = {
    **dict.fromkeys(("SHOULDER", "HUMERUS", "ARM", "UPPERARM", "CLAVICLE", "SCAPULA", "ACJOINT"), "shoulder"),
    **dict.fromkeys(("ELBOW",), "elbow"),
    **dict.fromkeys(("FOREARM", "WRIST", "HAND", "FINGER", "THUMB", "RADIUS", "ULNA"), "forearm_wrist_hand"),
    **dict.fromkeys(("HIP", "PELVIS", "ACETABULUM", "HIPJOINT"), "hip_pelvis"),
    **dict.fromkeys(("FEMUR", "THIGH"), "femur"),
    **dict.fromkeys(("KNEE", "PATELLA"), "knee"),
    **dict.fromkeys(
        ("LEG", "LOWERLEG", "TIBIA", "FIBULA", "ANKLE", "FOOT", "TOE", "CALCANEUS", "HEEL"), "leg_ankle_foot"
    ),
    **dict.fromkeys(
        ("SPINE", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "TLSPINE", "LSSPINE", "SACRUM", "COCCYX"), "spine"
    ),
    **dict.fromkeys(("CHEST", "THORAX", "RIB", "RIBS", "STERNUM", "LUNG"), "chest"),
}
"""Body Part Examined, upper-cased with everything but letters and digits removed ("L-SPINE" → "LSPINE")."""

_UNINFORMATIVE = frozenset(("EXTREMITY", "WHOLEBODY", "ABDOMEN", "HEAD", "SKULL", "NECK", "UNKNOWN", "OTHER", ""))
"""Body Part Examined values that name no canonical body part; they neither decide nor conflict."""

_KEYWORDS: Mapping[str, tuple[str, ...]] = {
    "shoulder": (
        "SHOULDER", "SHOULDERS", "HUMERUS", "HUMERAL", "CLAVICLE", "CLAVICULA", "SCAPULA", "SCAPULAR",
        "ACROMIOCLAVICULAR", "AC JOINT", "GLENOHUMERAL", "UPPER ARM", "TSA", "RTSA",
    ),
    "elbow": ("ELBOW", "ELBOWS", "OLECRANON"),
    "forearm_wrist_hand": (
        "FOREARM", "FOREARMS", "WRIST", "WRISTS", "HAND", "HANDS", "FINGER", "FINGERS", "THUMB", "SCAPHOID",
        "RADIUS", "ULNA", "CARPAL", "METACARPAL",
    ),
    "hip_pelvis": ("HIP", "HIPS", "PELVIS", "PELVIC", "ACETABULUM", "ACETABULAR", "THA", "THR"),
    "femur": ("FEMUR", "FEMORA", "THIGH", "THIGHS"),
    "knee": ("KNEE", "KNEES", "PATELLA", "PATELLAR", "TKA", "TKR"),
    "leg_ankle_foot": (
        "LEG", "LEGS", "LOWER LEG", "TIBIA", "TIBIAL", "FIBULA", "FIBULAR", "TIB FIB", "ANKLE", "ANKLES", "FOOT",
        "FEET", "TOE", "TOES", "CALCANEUS", "CALCANEAL", "HEEL",
    ),
    "spine": (
        "SPINE", "SPINAL", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "LUMBAR", "LUMBOSACRAL", "CERVICAL", "SACRUM",
        "COCCYX", "VERTEBRA", "VERTEBRAE", "SCOLIOSIS",
    ),
    "chest": ("CHEST", "THORAX", "CXR", "RIB", "RIBS", "LUNG", "LUNGS", "STERNUM"),
}  # fmt: skip
"""Words or phrases (whole words, upper case) that name a body part in free-text descriptions."""

_IGNORED_PHRASES = ("FROG LEG", "LEG LENGTH", "LEG LENGTHS", "LONG LEG", "FULL LEG", "WHOLE LEG", "BOTH LEGS")
"""Removed before matching: a hip view ("frog leg") or a whole-limb study that is no single body part."""


def _words(text: str) -> str:
    """Upper case, letters and digits split into words: "XR HIP-2V" → " XR HIP 2 V " (padded for phrase search)."""
    words = " ".join(re.findall(r"[A-Z]+|[0-9]+", text.upper()))
    padded = f" {words} "
    for phrase in _IGNORED_PHRASES:
        padded = padded.replace(f" {phrase} ", " ")
    return padded


def _from_text(text: str) -> frozenset[str]:
    padded = _words(text)
    return frozenset(part for part, words in _KEYWORDS.items() if any(f" {word} " in padded for word in words))


def _from_examined(value: str) -> frozenset[str]:
    compact = re.sub(r"[^A-Z0-9]", "", value.upper())
    if compact in _EXAMINED:
        return frozenset((_EXAMINED[compact],))
    if compact in _UNINFORMATIVE:
        return frozenset()
    return _from_text(value)  # non-standard values such as "LEFT HIP" or "PELVIS AP"


def _tag_text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        return " ".join(str(v) for v in value)
    return str(value)


def body_parts_by_tag(ds: pydicom.Dataset) -> dict[str, frozenset[str]]:
    """For each of :data:`TAGS` that names at least one body part, the canonical body parts it names.

    More than one part from one tag ("ELBOW AND FOREARM") or different parts from different tags is a conflict.
    """
    found: dict[str, frozenset[str]] = {}
    for keyword in TAGS:
        text = _tag_text(ds, keyword)
        if not text.strip():
            continue
        parts = _from_examined(text) if keyword == "BodyPartExamined" else _from_text(text)
        if parts:
            found[keyword] = parts
    return found


def body_part_from_tags(ds: pydicom.Dataset) -> str | None:
    """The one canonical body part the header tags agree on, or None when none names one or they conflict.

    Reads BodyPartExamined (DICOM defined terms, see the module notes), then StudyDescription, SeriesDescription
    and ProtocolName by whole-word keyword matching, case-insensitive ("XR HIP 2V", "PELVIS AP", "THA", "L-SPINE").
    Tags are wrong in about 15% of studies, so an installed body_part model's answer takes precedence over this one.
    """
    named = set().union(*body_parts_by_tag(ds).values())
    return named.pop() if len(named) == 1 else None
