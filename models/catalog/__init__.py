"""Card templates, one per task predictd knows: ``<task>.json`` in this package (package data).

A template is a complete model card (version "0.0.0", empty sha256) without weights: no weights ship with predictd.
The training toolkit starts from a template, trains on the site's data, and saves the finished card next to the
weights; it is also the reference for labels, input size, applicability and bilaterality of each task.

Choices recorded in the templates (their ``description`` repeats them):

- Label keys are the data folder names where public data exists (``hip_tha_radiologyai``: no_THA / yes_THA / yes_HRA;
  ``shoulder_implant_uci``: Cofield / Depuy / Tornier / Zimmer), so training needs no key mapping.
- No label carries a public code: none has been verified, so reporting uses the private 99PREDICTD scheme.
- Thresholds: binary tasks 0.5 on the positive class (the argmax point, to be re-set from validation data); the
  body_part router 0.5 per class (below it the cascade falls back to the tags); multi-class findings none (argmax).
- ``femoral_fixation_model`` has site-specific classes (the device models a hospital uses); its single label
  ``unknown_device`` is a placeholder (a card needs at least one label) that training replaces with the site's device
  folder names. :data:`SITE_SPECIFIC_LABELS` lists such tasks.
- ``hip_arthroplasty`` is not bilateral: its images are whole AP pelvis radiographs labelled per image, not per hip.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from predictd.models.card import CardError, ModelCard

SITE_SPECIFIC_LABELS = frozenset({"femoral_fixation_model"})
"""Tasks whose template labels are placeholders; training builds the labels from the site's data."""
TEMPLATE_NOTE = (
    "Card template: no weights ship with predictd. Train it on your site's labelled data with the training toolkit, "
    "which writes this card (with version, sha256 and calibrated thresholds) next to the weights."
)
"""How every template's description begins; a trained card has weights, so its description drops it."""


def trained_description(description: str) -> str:
    """A template's description for a card trained from it: without :data:`TEMPLATE_NOTE`."""
    return description.removeprefix(TEMPLATE_NOTE).lstrip()


@cache
def _load() -> dict[str, ModelCard]:
    cards: dict[str, ModelCard] = {}
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        try:
            card = ModelCard.from_dict(json.loads(entry.read_text()))
        except json.JSONDecodeError as exc:
            raise CardError(f"catalog template {entry.name} is not valid JSON: {exc}") from exc
        if card.task in cards:
            raise CardError(f"catalog template {entry.name}: task {card.task!r} defined twice")
        if entry.name != f"{card.task}.json":
            raise CardError(f"catalog template {entry.name} holds task {card.task!r}; name it {card.task}.json")
        cards[card.task] = card
    return cards


def catalog() -> dict[str, ModelCard]:
    """Task → card template, for every template shipped (a fresh dict; the cards are frozen)."""
    return dict(_load())


def template(task: str) -> ModelCard:
    """The card template for ``task``; CardError naming the known tasks when there is none."""
    cards = _load()
    if task not in cards:
        raise CardError(f"no card template for task {task!r}; known: {sorted(cards)}")
    return cards[task]
