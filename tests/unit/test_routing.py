"""outbox.routed: which destination gets which document, in the order they must arrive."""

from __future__ import annotations

from pathlib import Path

from predictd.daemon import outbox
from predictd.daemon.config_send import DicomDestination, Hl7Destination, StowDestination
from predictd.daemon.outbox import OUTBOX_FOLDER, Document, DocumentKind

SR_DOC = Document(DocumentKind.SR, "1.2.3.1", Path("sr.dcm"))
KEY = Document(DocumentKind.KEY_IMAGE, "1.2.3.2", Path("key.dcm"))
ORU_A = Document(DocumentKind.HL7, "1.2.3.3", Path("a.hl7"), destination="ris-a")
ORU_B = Document(DocumentKind.HL7, "1.2.3.4", Path("b.hl7"), destination="ris-b")


def test_dicom_destinations_get_key_images_before_the_sr_and_each_hl7_receiver_its_own_message() -> None:
    destinations = [
        DicomDestination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104),
        StowDestination(type="stow", name="web", url="http://127.0.0.1:8042/dicom-web"),
        Hl7Destination(type="hl7", name="ris-a", host="127.0.0.1", port=2575),
        Hl7Destination(type="hl7", name="ris-b", host="127.0.0.1", port=2576),
    ]
    pairs = outbox.routed(destinations, [SR_DOC, ORU_A, ORU_B, KEY])
    assert pairs == [
        ("pacs", KEY),
        ("pacs", SR_DOC),
        ("web", KEY),
        ("web", SR_DOC),
        ("ris-a", ORU_A),
        ("ris-b", ORU_B),
    ]


def test_without_destinations_the_outbox_folder_gets_the_dicom_documents() -> None:
    assert outbox.routed([], [SR_DOC, KEY]) == [(OUTBOX_FOLDER, KEY), (OUTBOX_FOLDER, SR_DOC)]
