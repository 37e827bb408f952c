"""``[send]``: where the documents go. One table per destination, a tagged union on ``type`` (dicom, stow, hl7), each
with its own optional ``tls`` table; split from daemon/config.py, which holds the rest of the settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from predictd.daemon.config_base import ClientTls, Section


class DicomDestination(Section):
    """A PACS (or any Storage SCP) that receives the SR and key images by C-STORE."""

    type: Literal["dicom"] = "dicom"
    name: str
    ae_title: str
    host: str
    port: int
    calling_ae_title: str | None = None
    """AE title predictd presents; defaults to receive.ae_title."""
    timeout_seconds: float = 30.0
    tls: ClientTls | None = None
    """DICOM TLS to this peer (its TLS port); absent: plain TCP."""


class StowDestination(Section):
    """A DICOMweb server that receives the SR and key images by STOW-RS (one POST per object)."""

    type: Literal["stow"]
    name: str
    url: str
    """The service's base URL, e.g. ``http://pacs:8042/dicom-web``; objects are POSTed to ``{url}/studies``."""
    username: str | None = None
    """HTTP basic authentication, when the server asks for it."""
    password: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra request headers, e.g. ``{ Authorization = "Bearer ..." }``."""
    timeout_seconds: float = 30.0
    tls: ClientTls | None = None
    """For an https URL: the CAs to trust (default: the system's) and a client certificate, if the server asks."""

    @model_validator(mode="after")
    def _tls_needs_https(self) -> Self:
        if self.tls is not None and not self.url.lower().startswith("https://"):
            raise ValueError("tls is set, so url must start with https://")
        return self


class Hl7Destination(Section):
    """A dictation or RIS system that receives the preliminary report text as HL7 v2 ORU^R01 over MLLP."""

    type: Literal["hl7"]
    name: str
    host: str
    port: int
    sending_application: str = "PREDICTD"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    timeout_seconds: float = 30.0
    tls: ClientTls | None = None
    """MLLP over TLS (as IHE ITI TF-2 "MLLP over TLS" and most interface engines offer); absent: plain TCP."""


def _destination_type(value: Any) -> str:
    """Tables without ``type`` are DICOM destinations, as every destination was before STOW-RS and HL7."""
    if isinstance(value, dict):
        return str(value.get("type", "dicom"))
    return str(getattr(value, "type", "dicom"))


Destination = Annotated[
    Annotated[DicomDestination, Tag("dicom")]
    | Annotated[StowDestination, Tag("stow")]
    | Annotated[Hl7Destination, Tag("hl7")],
    Discriminator(_destination_type),
]


class SendSettings(Section):
    destinations: list[Destination] = Field(default_factory=list)
    outbox_dir: Path = Path("var/outbox")
    """With no destination configured, documents are written here instead."""
    give_up_after_hours: float = 72.0
    """A delivery that keeps failing is given up (its study ends ``failed``) only this long after it was queued: a
    weekend PACS outage must not lose results."""
    max_attempts: int = 0
    """Also give up after this many attempts; 0 (default): by age only."""
    backoff_base_seconds: float = 5.0
    backoff_cap_seconds: float = 900.0
    probe_seconds: float = 5.0
    """How often a destination with deliveries waiting out a backoff is probed (C-ECHO, HTTP OPTIONS, a TCP
    connect); when it answers, its deliveries go at once instead of at their backoff time."""

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, value: list[Destination]) -> list[Destination]:
        names = [d.name for d in value]
        if len(names) != len(set(names)):
            raise ValueError("destination names must be unique")
        return value
