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

CARD_FILE = "card.json"


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

    @property
    def label_keys(self) -> list[str]:
        return [label.key for label in self.labels]

    def label(self, key: str) -> Label:
        for label in self.labels:
            if label.key == key:
                return label
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        try:
            fields = dict(data)
            fields["labels"] = tuple(Label(**label) for label in fields["labels"])
            fields["preprocessing"] = Preprocessing(**fields.get("preprocessing", {}))
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
