"""The Prediction dataclass: the contract between models/ and reporting/ (and the daemon).

Deliberately free of torch and pydicom, so reporting and the database layer can use it cheaply.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Prediction:
    """One model's answer for one image (or one side of one image)."""

    model_name: str
    model_version: str
    task: str
    sop_instance_uid: str
    series_instance_uid: str
    label: str
    """Key of the winning label, or "indeterminate" when no class clears its threshold."""
    probability: float
    """Calibrated probability of ``label`` (of the top class when indeterminate)."""
    probabilities: dict[str, float] = field(default_factory=dict)
    """Calibrated probability of every label, keyed by label key."""
    laterality: str | None = None
    """"R", "L" or None (whole image / unknown)."""
    region: str | None = None
    """"image-left" or "image-right" when a bilateral model read one half of the image; None for the whole image.
    Lets the report tell the two hips apart when the patient side could not be determined."""
    untrained: bool = False
    """True for the demonstration model: its predictions are meaningless and the report must say so."""

    INDETERMINATE = "indeterminate"

    @property
    def is_indeterminate(self) -> bool:
        return self.label == self.INDETERMINATE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Prediction:
        return cls(**data)
