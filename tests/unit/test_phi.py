"""models.phi: exception texts keep the library's words, never the values it quotes."""

from __future__ import annotations

import pydicom

from predictd.models.phi import exception_text, scrub


def test_scrub_removes_quoted_values_but_keeps_vrs_and_uids() -> None:
    text = "Unable to convert 'ZQXDOB1923' to 'DA' object; syntax '1.2.840.10008.1.2.4.80'; b'ZQX\\x00'; \"Doe^J\""
    assert scrub(text) == "Unable to convert '…' to 'DA' object; syntax '1.2.840.10008.1.2.4.80'; '…'; '…'"
    assert scrub("PatientID '12345678' invalid") == "PatientID '…' invalid"  # digits alone may be an ID


def test_exception_text_cuts_header_values_even_unquoted() -> None:
    ds = pydicom.Dataset()
    ds.PatientName = "ZQXNAME^PATIENT"
    ds.AccessionNumber = "ZQXACC55"
    exc = ValueError("bad value ZQXNAME^PATIENT in\n  element for ZQXACC55")
    assert exception_text(exc, [ds]) == "ValueError: bad value [redacted] in element for [redacted]"
