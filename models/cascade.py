"""Which installed models read an image: pure selection from the cards' ``applies_to``, not code per task.

The body part comes from the body_part (router) model when it gave an answer, else from the header tags
(models.body_part.body_part_from_tags), which are wrong in about 15% of studies. A finding card applies when its
``applies_to.body_parts`` is empty or holds the body part, its ``applies_to.views`` is empty or holds the image's
ViewPosition, and its ``applies_to.modalities`` is empty or holds the image's Modality (an image without one is
read: the content check and the domain gate judge its pixels). A card restricted to body parts (or views) does not
apply when the body part (or view) is unknown: running a hip model on an unidentified image would put a hip finding
into a report that may not be about a hip.
Router cards are never selected as findings; running the router first is the caller's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pydicom

from predictd.models.body_part import BODY_PARTS, body_part_from_tags, body_parts_by_tag
from predictd.models.card import ModelCard
from predictd.models.prediction import Prediction

INDETERMINATE = "indeterminate"
"""What a router answers when no class reached its threshold; treated as no answer."""


@dataclass(frozen=True)
class Selection:
    cards: tuple[ModelCard, ...]
    """The finding cards that apply, in the order given."""
    body_part: str | None
    """Canonical body part used for the selection; None when unknown."""
    source: str
    """Where the body part came from: "model", "tags" or "none"."""
    reason: str
    """One sentence for logs and skip reasons, e.g. "body part knee from BodyPartExamined tags; no installed ..."."""


def _view(ds: pydicom.Dataset) -> str:
    return str(ds.get("ViewPosition", "") or "").strip().upper()


def _modality(ds: pydicom.Dataset) -> str:
    return str(ds.get("Modality", "") or "").strip().upper()


def reads_modality(card: ModelCard, modality: str) -> bool:
    """Whether ``card`` reads images of ``modality`` ("": none given, read; the pixels are judged instead)."""
    return not card.applies_to.modalities or not modality or modality in card.applies_to.modalities


def applies(card: ModelCard, body_part: str | None, view: str, modality: str = "") -> bool:
    """Whether a finding card applies to an image of ``body_part`` (None: unknown) seen in ``view`` ("": unknown),
    of ``modality`` ("": none given)."""
    if card.role == "router" or not reads_modality(card, modality):
        return False
    parts, views = card.applies_to.body_parts, card.applies_to.views
    if parts and body_part not in parts:
        return False
    return not views or view in views


def _plural(n: int) -> str:
    return f"{n} model applies" if n == 1 else f"{n} models apply"


def select_cards(cards: Sequence[ModelCard], ds: pydicom.Dataset, body_part_from_model: str | None = None) -> Selection:
    """The finding cards that apply to ``ds``, with the body part used, its source, and a readable reason.

    ``body_part_from_model`` is the router's answer for this image (a key of BODY_PARTS); None, "indeterminate" or a
    key outside BODY_PARTS means no answer, and the tags decide.
    """
    by_tag = body_parts_by_tag(ds)
    tags_part = body_part_from_tags(ds)
    notes: list[str] = []
    if body_part_from_model in BODY_PARTS:
        body_part: str | None = body_part_from_model
        source = "model"
        origin = "from the body_part model"
        if tags_part is not None and tags_part != body_part:
            notes.append(f"tags say {tags_part}")
    elif tags_part is not None:
        body_part, source = tags_part, "tags"
        origin = f"from {'/'.join(by_tag)} tags"
    else:
        body_part, source = None, "none"
        if by_tag:
            said = ", ".join(f"{tag} says {'/'.join(sorted(parts))}" for tag, parts in by_tag.items())
            origin = f"unknown (tags conflict: {said})"
        else:
            origin = "unknown (no tag names one)"
    if body_part_from_model not in (None, INDETERMINATE) and body_part_from_model not in BODY_PARTS:
        notes.append(f"body_part model answer {body_part_from_model!r} is not a known body part")

    view, modality = _view(ds), _modality(ds)
    findings = [card for card in cards if card.role != "router"]
    chosen = tuple(card for card in findings if applies(card, body_part, view, modality))
    for card in findings:
        if not reads_modality(card, modality):
            notes.append(f"{card.name} reads {'/'.join(card.applies_to.modalities)}, image is {modality}")
            continue
        views = card.applies_to.views
        part_ok = not card.applies_to.body_parts or body_part in card.applies_to.body_parts
        if part_ok and views and view not in views:
            notes.append(f"{card.name} needs view {'/'.join(views)}, image has {view or 'none'}")

    if chosen:
        names = ", ".join(card.name for card in chosen)
        subject = f"body part {body_part} {origin}" if body_part else f"body part {origin}"
        reason = f"{subject}; {_plural(len(chosen))}: {names}"
    elif body_part:
        via = "from the body_part model" if source == "model" else "from tags"
        reason = f"no installed model applies to body part {body_part} ({via})"
    else:
        reason = f"no installed model applies: body part {origin}"
    if notes:
        reason += "; " + "; ".join(notes)
    return Selection(cards=chosen, body_part=body_part, source=source, reason=reason)


@dataclass(frozen=True)
class Classification:
    """Predictions for a batch of images, and for each image why these models ran (or none did)."""

    predictions: list[Prediction]
    selections: dict[str, Selection]
    """SOP Instance UID → the cascade's selection for that image."""
    overlays: dict[int, np.ndarray] = field(default_factory=dict)
    """Index in ``predictions`` → the key-image overlay (RGB uint8) of that decided finding, when asked for."""

    @property
    def skip_reason(self) -> str:
        """Why nothing was predicted: the distinct selection reasons, joined."""
        return "; ".join(dict.fromkeys(s.reason for s in self.selections.values())) or "no image to classify"
