"""ModelCard: everything needed to run, explain and report one model, saved next to its weights.

A model directory holds ``card.json`` and the safetensors file it names. Training and inference read the same card,
so preprocessing can never drift between them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from predictd.models.body_part import BODY_PARTS

CARD_FILE = "card.json"
ROLES = ("finding", "router")
"""A "router" card (the body_part model) is run first and its answer selects the "finding" cards (models.cascade)."""


class CardError(ValueError):
    """A card is missing, malformed, or its weights do not match it."""


@dataclass(frozen=True)
class Label:
    key: str
    """Stable machine name, e.g. "tha"."""
    display: str
    """Human name, e.g. "total hip arthroplasty"."""
    phrase: str = ""
    """Report phrase; defaults to the display name."""
    code_value: str | None = None
    code_scheme: str | None = None
    code_meaning: str | None = None

    @property
    def report_phrase(self) -> str:
        return self.phrase or self.display


@dataclass(frozen=True)
class Preprocessing:
    input_size: int = 224
    """Square side in pixels after aspect-preserving resize and pad."""
    in_chans: int = 1
    mean: float = 0.5
    std: float = 0.25
    window: str = "first"
    """"first": first VOI window in the file (else VOI LUT, else min-max); "minmax": always min-max."""
    crop_content: bool = False
    """Remove uniform borders before resizing (models.preprocess.content_box). False only for cards trained before
    it existed: a model is fed the way it was trained. ``predictd train`` writes True."""


@dataclass(frozen=True)
class Applicability:
    """Which images a card is meant for; models.cascade.select_cards reads it. Empty means "any"."""

    body_parts: tuple[str, ...] = ()
    """Canonical body-part keys (models.body_part.BODY_PARTS). A restricted card is skipped when the part is unknown."""
    views: tuple[str, ...] = ()
    """ViewPosition (0018,5101) values, e.g. "AP", "PA", "LAT". A restricted card is skipped when the view is unset."""
    modalities: tuple[str, ...] = ()
    """Modality (0008,0060) values, e.g. "CR", "DX": a CT of the pelvis is no hip radiograph, whatever its body part.
    Unlike body parts and views, an image without Modality (a film digitiser's Secondary Capture) is read: the
    content check and the domain gate judge its pixels."""

    def to_dict(self) -> dict[str, list[str]]:
        return {"body_parts": list(self.body_parts), "views": list(self.views), "modalities": list(self.modalities)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Applicability:
        """Lists (as JSON has them) become tuples; unknown body parts and non-string values are a CardError."""
        if not isinstance(data, dict):
            raise CardError(f"applies_to must be an object, not {type(data).__name__}")
        unknown_keys = set(data) - {"body_parts", "views", "modalities"}
        if unknown_keys:
            raise CardError(f"applies_to has unknown fields {sorted(unknown_keys)}")
        body_parts = _strings(data.get("body_parts", ()), "applies_to.body_parts")
        views = _strings(data.get("views", ()), "applies_to.views")
        modalities = _strings(data.get("modalities", ()), "applies_to.modalities")
        unknown = [part for part in body_parts if part not in BODY_PARTS]
        if unknown:
            raise CardError(f"applies_to.body_parts: unknown body parts {unknown}; known: {list(BODY_PARTS)}")
        return cls(
            body_parts=body_parts,
            views=tuple(view.upper() for view in views),
            modalities=tuple(modality.upper() for modality in modalities),
        )


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise CardError(f"{what} must be a list of strings, not {value!r}")
    if not all(isinstance(item, str) and item for item in value):
        raise CardError(f"{what} must be a list of non-empty strings, not {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    task: str
    arch: str
    """timm architecture name."""
    labels: tuple[Label, ...]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    weights_file: str = "weights.safetensors"
    sha256: str = ""
    temperature: float = 1.0
    thresholds: dict[str, float] = field(default_factory=dict)
    """Per-label minimum probability; below it the prediction is indeterminate."""
    untrained: bool = False
    description: str = ""
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for timm.create_model (e.g. a smaller width for tiny test models)."""
    applies_to: Applicability = field(default_factory=Applicability)
    """Body parts and views the model is meant for (default: any image)."""
    bilateral: bool = False
    """Split an AP pelvis image into its two hips and classify each alone (one prediction per side)."""
    role: str = "finding"
    """"finding" (default) or "router": the body_part card whose answer selects the finding cards."""
    training: dict[str, Any] = field(default_factory=dict)
    """Provenance written by ``predictd train``/``export``: data hash, split sizes, seed, options, metrics."""
    members: int = 1
    """Networks in the weights file: more than one for a cross-validated ensemble (models.ensemble)."""
    tta_zooms: tuple[float, ...] = (1.0,)
    """Test-time augmentation of an ensemble: its logits averaged over these central zooms of the input (1.0 first:
    the unzoomed view gives the domain gate's features and the Grad-CAM). (1.0,) is none."""
    gate: dict[str, Any] = field(default_factory=dict)
    """The domain gate (models.gate), empty when the model has none: ``method``, ``file``, ``sha256``,
    ``distance_threshold``, ``odds_threshold`` (None without an outlier classifier), ``coverage`` (target share of
    in-domain images that pass), ``fitted_on``, and ``evaluation`` (coverage and out-of-domain refusal measured by
    ``predictd evaluate --ood``)."""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise CardError(f"model card {self.name}: role must be one of {list(ROLES)}, not {self.role!r}")
        if not isinstance(self.members, int) or self.members < 1:
            raise CardError(f"model card {self.name}: members must be a positive integer, not {self.members!r}")
        zooms = tuple(self.tta_zooms)
        if not zooms or zooms[0] != 1.0 or not all(0.5 <= z <= 1.0 for z in zooms):
            raise CardError(f"model card {self.name}: tta_zooms must start with 1.0, each in [0.5, 1], not {zooms}")
        if zooms != (1.0,) and self.members < 2:
            raise CardError(f"model card {self.name}: tta_zooms applies to an ensemble (members >= 2)")
        if self.gate and not {"file", "sha256", "distance_threshold"} <= set(self.gate):
            needs = "file, sha256 and distance_threshold"
            raise CardError(f"model card {self.name}: gate needs {needs}, has {sorted(self.gate)}")
        if not self.temperature > 0:
            raise CardError(f"model card {self.name}: temperature must be positive, not {self.temperature}")
        unknown = set(self.thresholds) - {label.key for label in self.labels}
        if unknown:
            raise CardError(f"model card {self.name}: thresholds for unknown labels {sorted(unknown)}")

    def check_loadable(self) -> None:
        """A card can drive a network only when it names its labels (a catalog template may not, yet)."""
        if not self.labels:
            raise CardError(f"model card {self.name}: card has no labels")

    @property
    def gated(self) -> bool:
        """Whether the model refuses images unlike its training images (it has a domain gate)."""
        return bool(self.gate)

    @property
    def label_keys(self) -> list[str]:
        return [label.key for label in self.labels]

    def label(self, key: str) -> Label:
        for label in self.labels:
            if label.key == key:
                return label
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["applies_to"] = self.applies_to.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        try:
            fields = dict(data)
            fields["labels"] = tuple(Label(**label) for label in fields["labels"])
            fields["preprocessing"] = Preprocessing(**fields.get("preprocessing", {}))
            fields["tta_zooms"] = tuple(float(z) for z in fields.get("tta_zooms", (1.0,)))
            if "applies_to" in fields:  # cards written before the cascade lack the next three fields
                fields["applies_to"] = Applicability.from_dict(fields["applies_to"])
            if not isinstance(fields.get("bilateral", False), bool):
                raise CardError(f"bilateral must be true or false, not {fields['bilateral']!r}")
            return cls(**fields)
        except (KeyError, TypeError) as exc:
            raise CardError(f"malformed model card: {exc}") from exc

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CARD_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> ModelCard:
        path = directory / CARD_FILE
        if not path.is_file():
            raise CardError(f"no {CARD_FILE} in {directory}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CardError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_cards(models_dir: Path) -> list[Path]:
    """Model directories (those holding a card) directly under ``models_dir``, sorted by name."""
    if not models_dir.is_dir():
        return []
    return sorted(p for p in models_dir.iterdir() if (p / CARD_FILE).is_file())
