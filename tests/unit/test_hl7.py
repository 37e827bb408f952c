"""reporting.hl7: the ORU^R01 parses back with python-hl7 field by field, text round-trips, ACKs are read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import hl7
import pydicom
import pytest
from pydicom.dataset import Dataset

from predictd.reporting.hl7 import (
    CHARSET,
    SR_UID_ID,
    STUDY_UID_ID,
    TEXT_ID,
    ack_code,
    escape,
    message_control_id,
    oru_r01,
    parse_ack,
)
from tests.support import CR_JLSL

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
SR_UID = "1.2.826.0.1.3680043.8.498.1234567890"
TEXT = "Right hip hardware: total hip arthroplasty (p=0.97).\nAI-generated preliminary text; not verified."


def _header() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Müller^Hans^Peter^Dr.^Jr."
    ds.PatientID = "PID-42"
    ds.IssuerOfPatientID = "HOSP"
    ds.PatientBirthDate = "19500102"
    ds.PatientSex = "M"
    ds.AccessionNumber = "ACC123"
    ds.StudyDescription = "XR HIP RIGHT"
    ds.BodyPartExamined = "HIP"
    ds.Modality = "CR"
    ds.StudyDate = "20240501"
    ds.StudyTime = "101112.123456"
    ds.StudyInstanceUID = "1.2.3.4.5"
    return ds


def _build(header: Dataset, text: str = TEXT, **kwargs: object) -> str:
    args: dict[str, object] = {
        "message_control_id": message_control_id(SR_UID),
        "now": NOW,
        "sending_application": "PREDICTD",
        "sending_facility": "RADIOLOGY",
        "receiving_application": "DICTATION",
        "receiving_facility": "HOSPITAL",
        "sr_sop_instance_uid": SR_UID,
    }
    args.update(kwargs)
    return oru_r01(header, text, **args)  # type: ignore[arg-type]


def _f(message: hl7.Message, key: str) -> str:
    """A leaf by accessor ("PID.F5.R1.C2"), unescaped. python-hl7 quirk: "PID.F5" alone gives the first leaf."""
    return str(message.unescape(str(message[key])))


def _w(message: hl7.Message, segment: str, field: int) -> str:
    """A whole field as sent, components and all."""
    return str(message.segment(segment)(field))


def test_message_header() -> None:
    raw = _build(_header())
    assert "\n" not in raw and raw.split("\r")[0].startswith("MSH|^~\\&|")
    msg = hl7.parse(raw)
    msh = msg.segment("MSH")
    assert str(msh(3)) == "PREDICTD" and str(msh(4)) == "RADIOLOGY"
    assert str(msh(5)) == "DICTATION" and str(msh(6)) == "HOSPITAL"
    assert str(msh(7)) == "20240506070809+0000"
    assert str(msh(9)) == "ORU^R01^ORU_R01"
    assert str(msh(10)) == message_control_id(SR_UID)
    assert str(msh(11)) == "P" and str(msh(12)) == "2.5.1"
    assert str(msh(18)) == CHARSET
    assert [str(s[0]) for s in msg] == ["MSH", "PID", "ORC", "OBR", "OBX", "OBX", "OBX", "OBX"]


def test_patient_order_and_observations() -> None:
    msg = hl7.parse(_build(_header()))
    assert _f(msg, "PID.F3.R1.C1") == "PID-42"
    assert _f(msg, "PID.F3.R1.C4") == "HOSP"
    assert _f(msg, "PID.F3.R1.C5") == "MR"
    assert _w(msg, "PID", 5) == "Müller^Hans^Peter^Jr.^Dr."  # XPN: suffix before prefix
    assert _f(msg, "PID.F7") == "19500102" and _f(msg, "PID.F8") == "M"

    assert _f(msg, "ORC.F1") == "RE" and _f(msg, "ORC.F2") == "ACC123" and _f(msg, "ORC.F3") == "ACC123"
    assert _f(msg, "OBR.F2") == "ACC123" and _f(msg, "OBR.F3") == "ACC123"
    assert _f(msg, "OBR.F4.R1.C2") == "XR HIP RIGHT"
    assert _f(msg, "OBR.F7") == "20240501101112.1234"
    assert _f(msg, "OBR.F22") == "20240506070809+0000"
    assert _f(msg, "OBR.F25") == "P"

    obx = msg.segments("OBX")
    assert [str(s(1)) for s in obx] == ["1", "2", "3", "4"]
    assert (str(obx[0](2)), str(obx[0](3)), str(obx[0](5))) == ("HD", SR_UID_ID, SR_UID)
    assert (str(obx[1](2)), str(obx[1](3)), str(obx[1](5))) == ("HD", STUDY_UID_ID, "1.2.3.4.5")
    text = [s for s in obx if str(s(2)) == "TX"]
    assert all(str(s(3)) == TEXT_ID and str(s(4)) == "1" for s in text)
    assert "\n".join(msg.unescape(str(s(5))) for s in text) == TEXT
    assert all(str(s(11)) == "P" for s in obx)


def test_real_radiograph_header() -> None:
    """A real CR's header (WG04 RG3): IDs, name and the study time with its timezone offset reach the message."""
    header = pydicom.dcmread(CR_JLSL, stop_before_pixels=True)
    msg = hl7.parse(_build(header, sr_sop_instance_uid=None))
    assert _f(msg, "PID.F3.R1.C1") == "11RG3" and _f(msg, "PID.F3.R1.C4") == ""
    assert _w(msg, "PID", 5) == "CompressedSamples^RG3"
    assert _f(msg, "OBR.F7") == "20040826185059-0400"
    obx = msg.segments("OBX")
    assert str(obx[0](3)) == STUDY_UID_ID and str(obx[0](5)) == str(header.StudyInstanceUID)


@pytest.mark.parametrize(
    "line",
    ["a|b^c&d~e\\f", "\\E\\ stays literal", "|||", "^~\\&", "Größe 3 mm; α≥0.5"],
)
def test_escaping_round_trips(line: str) -> None:
    header = _header()
    header.PatientName = "O&Brien^Mary~Ann"  # "&" and "~" are legal in a PN component
    header.AccessionNumber = "A|1^2"
    raw = _build(header, text=f"first\n{line}\nlast")
    msg = hl7.parse(raw)
    assert len(msg.segments("OBX")) == 5  # nothing split a segment or a field
    tx = [msg.unescape(str(s(5))) for s in msg.segments("OBX") if str(s(2)) == "TX"]
    assert tx == ["first", line, "last"]
    assert _f(msg, "PID.F5.R1.C1") == "O&Brien" and _f(msg, "PID.F5.R1.C2") == "Mary~Ann"
    assert _f(msg, "OBR.F2") == "A|1^2" and _f(msg, "ORC.F3") == "A|1^2"


def test_control_characters_cannot_break_framing() -> None:
    raw = _build(_header(), text="a\x0bb\x1cc\td\re")
    assert not any(c in raw for c in "\x0b\x1c\t\n")
    tx = [s for s in hl7.parse(raw).segments("OBX") if str(s(2)) == "TX"]
    assert [str(s(5)) for s in tx] == ["a b c d", "e"]  # CR is a line break, like LF


def test_escape() -> None:
    assert escape("a|b^c&d~e\\f") == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"
    assert escape("x\ny") == "x y"


def test_missing_attributes_give_empty_fields() -> None:
    header = Dataset()
    header.StudyInstanceUID = "1.2.3"
    header.PatientName = ""
    raw = _build(header, sending_facility="", receiving_facility="")
    assert "None" not in raw
    msg = hl7.parse(raw)
    for segment, field in [("PID", 3), ("PID", 5), ("PID", 7), ("PID", 8), ("ORC", 2), ("OBR", 2), ("OBR", 4)]:
        assert _w(msg, segment, field) == "", (segment, field)
    assert _w(msg, "OBR", 3) == _w(msg, "OBR", 7) == ""
    assert _f(msg, "OBR.F25") == "P"


def test_service_falls_back_and_uses_a_procedure_code() -> None:
    header = _header()
    del header.StudyDescription
    assert _w(hl7.parse(_build(header)), "OBR", 4) == "^CR HIP"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "RPID16", "RADLEX", "XR Hip 1 view"
    header.ProcedureCodeSequence = [code]
    assert _w(hl7.parse(_build(header)), "OBR", 4) == "RPID16^XR Hip 1 view^RADLEX"


def test_issuer_qualifiers_and_odd_values() -> None:
    header = _header()
    qualifier = Dataset()
    qualifier.UniversalEntityID = "1.2.3.99"
    qualifier.UniversalEntityIDType = "ISO"
    header.IssuerOfPatientIDQualifiersSequence = [qualifier]
    header.PatientSex = "X"
    with pytest.warns(UserWarning, match="Invalid value for VR DA"):
        header.PatientBirthDate = "1950.01.02"  # the retired ACR-NEMA form, still met in old archives
    msg = hl7.parse(_build(header))
    assert _w(msg, "PID", 3) == "PID-42^^^HOSP&1.2.3.99&ISO^MR"
    assert _f(msg, "PID.F8") == "" and _f(msg, "PID.F7") == "19500102"


def test_naive_and_offset_timestamps() -> None:
    naive = hl7.parse(_build(_header(), now=datetime(2024, 1, 2, 3, 4, 5)))
    assert str(naive.segment("MSH")(7)) == "20240102030405"
    cet = hl7.parse(_build(_header(), now=datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=1)))))
    assert str(cet.segment("MSH")(7)) == "20240102030405+0100"


def test_same_inputs_same_message() -> None:
    assert _build(_header()) == _build(_header())
    assert _build(_header(), text=TEXT + "\n") == _build(_header(), text=TEXT.replace("\n", "\r\n"))
    no_text = hl7.parse(_build(_header(), text="\n"))
    assert [str(s(2)) for s in no_text.segments("OBX")] == ["HD", "HD"]


def test_control_id_is_deterministic_and_short() -> None:
    first = message_control_id(SR_UID)
    assert first == message_control_id(SR_UID)
    assert first != message_control_id(SR_UID + "1")
    assert 0 < len(first) <= 20 and first.isalnum()
    assert len(message_control_id("1." + "9" * 62)) == 20
    with pytest.raises(ValueError):
        message_control_id("")


def _ack(code: str, text: str = "") -> str:
    ack = hl7.parse(_build(_header())).create_ack(code, message_id="ACK1")
    if text:
        ack.segment("MSA").assign_field(text, 3)
    return str(ack)


@pytest.mark.parametrize("code", ["AA", "AE", "AR", "CA", "CE", "CR"])
def test_ack_code(code: str) -> None:
    assert ack_code(_ack(code)) == (code, "")
    assert ack_code(_ack(code, "Unknown procedure")) == (code, "Unknown procedure")
    assert parse_ack(_ack(code)).control_id == message_control_id(SR_UID)


def test_ack_text_from_err_segment() -> None:
    """HL7 2.5 moved the error text from MSA-3 to ERR; it is read from there when MSA-3 is empty."""
    msh = "MSH|^~\\&|D|H|P|R|20240506||ACK^R01^ACK|9|P|2.5.1\r"
    assert ack_code(msh + "MSA|AE|ABC\rERR||||E||||Database \\T\\ queue down") == ("AE", "Database & queue down")
    coded = msh + "MSA|AR|ABC\rERR|||200^Unsupported message type^HL70357|E"
    assert ack_code(coded) == ("AR", "Unsupported message type")


@pytest.mark.parametrize(
    "raw",
    ["", "garbage", "MSH|^~\\&|D|H|P|R|2024||ACK|9|P|2.5.1", "MSH|^~\\&|D|H|P|R|2024||ACK|9|P|2.5.1\rMSA|ZZ|1"],
)
def test_malformed_ack(raw: str) -> None:
    with pytest.raises(ValueError):
        ack_code(raw)


def test_not_assessed_text_reaches_dictation_without_a_class() -> None:
    """The HL7 message carries the report text: a refused image's line, with no class and no probability."""
    from predictd.models.card import Label, ModelCard
    from predictd.models.prediction import Prediction
    from predictd.reporting.text import report_text

    card = ModelCard("hip", "1.0", "hip_arthroplasty", "x", (Label("yes_THA", "total hip arthroplasty"),))
    refused = Prediction("hip", "1.0", "hip_arthroplasty", "1.2.3.4.5.1", "1.2.3.4.5", Prediction.NOT_ASSESSED, 0.99)
    message = hl7.parse(_build(_header(), report_text([refused], {"hip": card})).replace("\n", "\r"))
    lines = [str(segment[5]) for segment in message.segments("OBX") if str(segment[2]) == "TX"]
    assert any("not assessed (the image is unlike those this model was trained on)" in line for line in lines)
    assert not any("arthroplasty (" in line or "0.99" in line for line in lines)
