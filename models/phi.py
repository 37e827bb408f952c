"""Text that may reach a log line, a stored reason or an operator: library messages without element values.

pydicom, highdicom and the codecs quote the values they choke on ("Unable to convert 'ZQXDOB1923' to 'DA'
object"), and a value may be a patient's name, ID or birth date. Every exception text predictd keeps goes through
:func:`exception_text`, and the log pipeline scrubs every line with :func:`scrub` as a second net. What stays: the
exception type, the library's own words, VR names and dotted UIDs (never patient data).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

VR_NAMES = frozenset(
    [
        "AE",
        "AS",
        "AT",
        "CS",
        "DA",
        "DS",
        "DT",
        "FD",
        "FL",
        "IS",
        "LO",
        "LT",
        "OB",
        "OD",
        "OF",
        "OL",
        "OV",
        "OW",
        "PN",
        "SH",
        "SL",
        "SQ",
        "SS",
        "ST",
        "SV",
        "TM",
        "UC",
        "UI",
        "UL",
        "UN",
        "UR",
        "US",
        "UT",
        "UV",
    ]
)
REDACTED = "'…'"
_QUOTED = re.compile(r"""b?'(?:[^'\\\n]|\\.)*'|b?"(?:[^"\\\n]|\\.)*\"""")
_DOTTED_UID = re.compile(r"^\d+(?:\.\d+)+$")

PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientAddress",
    "PatientMotherBirthName",
    "PatientTelephoneNumbers",
    "AccessionNumber",
    "ReferringPhysicianName",
    "InstitutionName",
)
"""Header values cut out of a message by :func:`exception_text` even where the library did not quote them."""


def _keep(quoted: str) -> bool:
    inner = quoted.lstrip("b")[1:-1]
    return not inner or inner in VR_NAMES or bool(_DOTTED_UID.match(inner))


def scrub(text: str) -> str:
    """``text`` with every quoted value but VR names and UIDs replaced by '…'."""
    return _QUOTED.sub(lambda m: m.group(0) if _keep(m.group(0)) else REDACTED, text)


def exception_text(exc: BaseException, sources: Iterable[Any] = (), limit: int = 500) -> str:
    """``Type: message`` on one line, quoted values scrubbed and the patient values of ``sources`` (datasets) cut."""
    message = scrub(f"{type(exc).__name__}: {' '.join(str(exc).split())}")
    for ds in sources:
        for keyword in PHI_KEYWORDS:
            value = str(ds.get(keyword) or "").strip()
            if len(value) >= 2:
                message = message.replace(value, "[redacted]")
    return message[:limit]
