"""The preliminary report text as an HL7 v2.5.1 ORU^R01, for dictation systems and RIS that do not read DICOM SR.

Pure (no I/O, no clock: the timestamp is an argument), so a retried send can rebuild the very same message.

Layout, after IHE RAD TF-2 Structured Report Export (RAD-28), the one IHE transaction that carries report text in an
ORU and the layout interface engines (dcm4chee, Mirth channels built for RAD-28) already map:

- MSH: ORU^R01^ORU_R01, version 2.5.1, processing id P, original acknowledgment mode (MSH-15/16 empty), and MSH-18
  "UNICODE UTF-8": the message is sent as UTF-8 so patient names survive without \\X..\\ escapes.
- PID: PID-3 PatientID with IssuerOfPatientID as assigning authority (type MR), PID-5 from the DICOM PN alphabetic
  group (Family^Given^Middle^Suffix^Prefix, HL7's XPN order), PID-7 birth date, PID-8 sex.
- ORC (RE) and OBR: placer and filler order number are the AccessionNumber; OBR-4 the procedure code (from
  ProcedureCodeSequence) or, failing that, text only (StudyDescription, else modality and body part); OBR-7 study
  date/time; OBR-22 the time of this result; OBR-25 "P" (preliminary: nobody accountable has read it).
- OBX, HD: "^SR Instance UID" (when an SR was built) and "^Study Instance UID", so the receiver can link the text to
  the images and to the SR. RAD-28's OBX is used rather than a ZDS segment: ZDS is IHE's convention for order
  messages (RAD-4/RAD-13), a Z-segment that strict parsers may reject in an ORU.
- OBX, TX: one per report text line, all with OBX-3 "^SR Text" and sub-ID 1 (one observation in several lines,
  blank lines kept), OBX-11 "P".

Every text value is escaped (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\) and control characters become spaces, so neither a "|" in
a report line nor a stray 0x0B/0x1C (which would break MLLP framing) can change the message structure. Missing DICOM
attributes give empty fields.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import hl7
import pydicom
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

VERSION = "2.5.1"
CHARSET = "UNICODE UTF-8"
RESULT_STATUS = "P"
"""Preliminary, in OBR-25 and OBX-11: the text is an AI draft."""
STUDY_UID_ID = "^Study Instance UID"
SR_UID_ID = "^SR Instance UID"
TEXT_ID = "^SR Text"
ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
"""HL7 table 0008: original mode (A*) and enhanced mode commit (C*) acknowledgment codes."""

_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LINES = re.compile(r"\r\n|\r|\n")
"""Line breaks only: str.splitlines would also split on 0x0B, 0x1C and friends, which escape() turns into spaces."""
_DIGITS = re.compile(r"\d+")
_TZ = re.compile(r"[+-]\d{4}")
_SEXES = frozenset({"M", "F", "O"})


@dataclass(frozen=True)
class Ack:
    """What an acknowledgment says: MSA-1 code, MSA-2 (the control id it answers) and the error text, if any."""

    code: str
    control_id: str
    text: str


def oru_r01(
    header: pydicom.Dataset,
    report_text: str,
    *,
    message_control_id: str,
    now: datetime,
    sending_application: str,
    sending_facility: str,
    receiving_application: str,
    receiving_facility: str,
    sr_sop_instance_uid: str | None = None,
) -> str:
    """The ORU^R01 for one study: ``header`` is its first image (read without pixels), segments joined by "\\r".

    ``now`` stamps MSH-7 and OBR-22 (a naive datetime is written without a UTC offset); pass the same value on a
    retry so the resent message is identical.
    """
    stamp = _dtm(now)
    accession = escape(_attr(header, "AccessionNumber"))
    msh = [
        "MSH",
        "^~\\&",
        escape(sending_application),
        escape(sending_facility),
        escape(receiving_application),
        escape(receiving_facility),
        stamp,
        "",
        "ORU^R01^ORU_R01",
        escape(message_control_id),
        "P",
        VERSION,
        "",
        "",
        "",
        "",
        "",
        CHARSET,
    ]
    pid = ["PID", "1", "", _patient_id(header), "", _patient_name(header), "", _date(_attr(header, "PatientBirthDate"))]
    pid.append(_sex(header))
    orc = ["ORC", "RE", accession, accession]
    obr = ["OBR", "1", accession, accession, _service(header), "", "", _study_dtm(header)]
    obr += [""] * 14 + [stamp, "", "", RESULT_STATUS]  # OBR-8..21 empty, OBR-22 result time, OBR-25 status
    segments = [msh, pid, orc, obr]
    uid_rows = [(SR_UID_ID, sr_sop_instance_uid or ""), (STUDY_UID_ID, _attr(header, "StudyInstanceUID"))]
    for identifier, uid in uid_rows:
        if uid:
            segments.append(_obx(len(segments) - 3, "HD", identifier, "", escape(uid)))
    text = report_text.rstrip("\r\n")
    for line in _LINES.split(text) if text else []:
        segments.append(_obx(len(segments) - 3, "TX", TEXT_ID, "1", escape(line)))
    return "\r".join("|".join(fields) for fields in segments)


def message_control_id(sr_sop_instance_uid: str) -> str:
    """A 20-character MSH-10 derived from the SR's UID, so every retry of the same result is the same message.

    The receiver can then discard a duplicate that arrived although its ACK was lost. 80 bits of SHA-256 in
    upper-case hex: within HL7 2.5.1's 20-character ST limit, and free of delimiters.
    """
    if not sr_sop_instance_uid:
        raise ValueError("a message control id needs the SR SOP Instance UID")
    return hashlib.sha256(sr_sop_instance_uid.encode("ascii")).hexdigest()[:20].upper()


def parse_ack(ack: str) -> Ack:
    """Read an ACK with python-hl7; ValueError when it is not HL7, has no MSA or has no table 0008 code.

    The text is MSA-3, or (HL7 2.5 moved it there) ERR-8 user message, else ERR-3's text; unescaped, one line.
    """
    try:
        message = hl7.parse(ack)
        msa = message.segment("MSA")
    except Exception as exc:  # python-hl7 raises ParseException, KeyError, IndexError ... on garbage
        raise ValueError(f"not an HL7 acknowledgment ({type(exc).__name__})") from exc
    code = _field(message, msa, 1).upper()
    if code not in ACK_CODES:
        raise ValueError(f"MSA-1 is {code[:10]!r}, not an acknowledgment code")
    text = _field(message, msa, 3)
    if not text:
        for err in _segments(message, "ERR"):
            text = _field(message, err, 8) or _component(message, err, 3, 2) or _field(message, err, 3)
            if text:
                break
    return Ack(code=code, control_id=_field(message, msa, 2), text=" ".join(text.split()))


def ack_code(ack: str) -> tuple[str, str]:
    """(MSA-1 code, MSA-3 text) of an ACK message; see parse_ack."""
    parsed = parse_ack(ack)
    return parsed.code, parsed.text


def escape(value: str) -> str:
    """HL7 escapes for the delimiters ``|^&~\\``; control characters (CR, LF, MLLP's 0x0B/0x1C) become spaces."""
    return "".join(_ESCAPES.get(c, c) for c in _CONTROL.sub(" ", value))


def _obx(set_id: int, value_type: str, identifier: str, sub_id: str, value: str) -> list[str]:
    return ["OBX", str(set_id), value_type, identifier, sub_id, value, "", "", "", "", "", RESULT_STATUS]


def _attr(ds: pydicom.Dataset, keyword: str) -> str:
    """The attribute as text, "" when absent or empty (never "None"); a multi-valued one keeps its first value."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else ""
    return str(value).strip()


def _join(components: Sequence[str], separator: str = "^") -> str:
    """Components joined, trailing empty ones dropped (so an absent value is an empty field, not "^^^")."""
    parts = list(components)
    while parts and not parts[-1]:
        parts.pop()
    return separator.join(parts)


def _patient_id(ds: pydicom.Dataset) -> str:
    """CX: id^^^authority^MR, the authority an HD from IssuerOfPatientID and its qualifiers (universal id, type)."""
    pid = _attr(ds, "PatientID")
    if not pid:
        return ""
    namespace, universal, universal_type = _attr(ds, "IssuerOfPatientID"), "", ""
    qualifiers = ds.get("IssuerOfPatientIDQualifiersSequence")
    if qualifiers:
        universal = _attr(qualifiers[0], "UniversalEntityID")
        universal_type = _attr(qualifiers[0], "UniversalEntityIDType")
    authority = _join([escape(namespace), escape(universal), escape(universal_type)], "&")
    return _join([escape(pid), "", "", authority, "MR"])


def _patient_name(ds: pydicom.Dataset) -> str:
    """XPN from the PN's alphabetic group: DICOM orders prefix before suffix, HL7 suffix (XPN.4) before prefix."""
    raw = ds.get("PatientName")
    if raw is None:
        return ""
    pn = PersonName(str(raw)) if not isinstance(raw, PersonName) else raw
    parts = [pn.family_name, pn.given_name, pn.middle_name, pn.name_suffix, pn.name_prefix]
    return _join([escape(p.strip()) for p in parts])


def _date(value: str) -> str:
    """A DICOM DA (also the old "YYYY.MM.DD") as HL7 DT; anything else is left out rather than sent wrong."""
    digits = value.replace(".", "")
    return digits if _DIGITS.fullmatch(digits) and len(digits) in (4, 6, 8) else ""


def _sex(ds: pydicom.Dataset) -> str:
    """DICOM M/F/O are HL7 table 0001's codes too; anything else is left empty."""
    sex = _attr(ds, "PatientSex").upper()
    return sex if sex in _SEXES else ""


def _study_dtm(ds: pydicom.Dataset) -> str:
    """StudyDate + StudyTime (+ TimezoneOffsetFromUTC) as an HL7 DTM; the fraction is cut to HL7's four digits."""
    date = _date(_attr(ds, "StudyDate"))
    if len(date) != 8:
        return date
    time = _attr(ds, "StudyTime").replace(":", "")
    whole, _, fraction = time.partition(".")
    if not (_DIGITS.fullmatch(whole) and len(whole) in (2, 4, 6)):
        return date
    result = date + whole
    if len(whole) == 6 and fraction and _DIGITS.fullmatch(fraction):
        result += "." + fraction[:4]
    offset = _attr(ds, "TimezoneOffsetFromUTC")
    return result + offset if _TZ.fullmatch(offset) else result


def _service(ds: pydicom.Dataset) -> str:
    """OBR-4 (CWE): the study's procedure code when there is one, else text only, which CWE allows."""
    procedure = ds.get("ProcedureCodeSequence")
    if procedure:
        item = procedure[0]
        code = [_attr(item, "CodeValue"), _attr(item, "CodeMeaning"), _attr(item, "CodingSchemeDesignator")]
        if code[0]:
            return _join([escape(c) for c in code])
    description = _attr(ds, "StudyDescription")
    if not description:
        description = " ".join(v for v in (_attr(ds, "Modality"), _attr(ds, "BodyPartExamined")) if v)
    return _join(["", escape(description)])


def _dtm(moment: datetime) -> str:
    stamp = moment.strftime("%Y%m%d%H%M%S")
    return stamp + moment.strftime("%z") if moment.utcoffset() is not None else stamp


def _segments(message: hl7.Message, segment_id: str) -> list[hl7.Segment]:
    try:
        return list(message.segments(segment_id))
    except KeyError:
        return []


def _field(message: hl7.Message, segment: hl7.Segment, index: int) -> str:
    """One field's text, unescaped; "" when the segment is shorter."""
    if len(segment) <= index:
        return ""
    return str(message.unescape(str(segment(index)))).strip()


def _component(message: hl7.Message, segment: hl7.Segment, index: int, component: int) -> str:
    if len(segment) <= index:
        return ""
    parts = str(segment(index)).split("^")
    return str(message.unescape(parts[component - 1])).strip() if len(parts) >= component else ""
