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
    """Key of the winning label; "indeterminate" when no class clears its threshold; "not_assessed" when the image
    failed the model's domain gate (it is unlike the images the model was trained on)."""
    probability: float
    """Calibrated probability of ``label`` (of the top class when indeterminate or not assessed: kept for audit,
    never reported)."""
    probabilities: dict[str, float] = field(default_factory=dict)
    """Calibrated probability of every label, keyed by label key."""
    laterality: str | None = None
    """"R", "L" or None (whole image / unknown)."""
    region: str | None = None
    """"image-left" or "image-right" when a bilateral model read one half of the image; None for the whole image.
    Lets the report tell the two hips apart when the patient side could not be determined."""
    untrained: bool = False
    """True for the demonstration model: its predictions are meaningless and the report must say so."""
    gate_score: float | None = None
    """The domain gate's score for this image (higher: less like the training images); None without a gate."""
    gate_threshold: float | None = None
    """The score above which the gate refuses; None without a gate."""
    content_problem: str | None = None
    """Why the pixels hold no radiograph at all (blank, noise, text; models.content_check), found before any model:
    the image is then not assessed whatever the gate says. None when the image passed that check."""

    INDETERMINATE = "indeterminate"
    NOT_ASSESSED = "not_assessed"
    NOT_ASSESSED_REASON = "not assessed: the image is unlike those this model was trained on"

    @property
    def is_indeterminate(self) -> bool:
        return self.label == self.INDETERMINATE

    @property
    def is_not_assessed(self) -> bool:
        return self.label == self.NOT_ASSESSED

    @property
    def is_decided(self) -> bool:
        """A class was named: neither indeterminate nor refused by the domain gate."""
        return not (self.is_indeterminate or self.is_not_assessed)

    @property
    def not_assessed_reason(self) -> str:
        """The sentence reports carry for a refused image: why the pixels hold no radiograph, or the gate's score
        and threshold."""
        if self.content_problem is not None:
            return f"{self.NOT_ASSESSED_REASON} ({self.content_problem})"
        if self.gate_score is None or self.gate_threshold is None:
            return self.NOT_ASSESSED_REASON
        return f"{self.NOT_ASSESSED_REASON} (domain score {self.gate_score:.2f} > {self.gate_threshold:.2f})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Prediction:
        return cls(**data)
