"""What every destination handler shares: ``SendError``, the ``Parcel`` it delivers and the ``Handler`` record.

A handler delivers one document to one destination and returns, or raises a SendError that says what went wrong
and whether trying again later can help. It holds no database and no retry policy: the send stage owns the outbox
rows and their retries (:mod:`daemon.send`, :mod:`daemon.outbox`), so every destination type is retried alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar


class SendError(RuntimeError):
    """A delivery failed; ``retryable`` says whether the same request may succeed later."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.retryable = retryable


@dataclass(frozen=True)
class Parcel:
    """One outbox row's document, and what a handler may need besides its destination's settings."""

    path: Path
    """The file in the spool: a Part 10 file, or an HL7 message as the report stage wrote it."""
    sop_instance_uid: str
    study_uid: str
    calling_ae: str
    """The AE title predictd presents when a DICOM destination names none (``receive.ae_title``)."""
    report_text: str | None = None
    """The report text to keep beside the document (the SR's, for the outbox folder); None for other documents."""


D = TypeVar("D")


@dataclass(frozen=True)
class Handler(Generic[D]):
    """How documents reach one destination type: its settings class and the function that delivers to it."""

    settings: type[D]
    deliver: Callable[[Parcel, D], None]

    def send(self, parcel: Parcel, dest: object) -> None:
        """Deliver ``parcel`` to ``dest``, which must be this handler's settings type (else TypeError: our bug)."""
        if not isinstance(dest, self.settings):
            raise TypeError(f"{type(dest).__name__} is not a {self.settings.__name__}")
        self.deliver(parcel, dest)
