"""Prepopulated report text: the lines a radiologist would otherwise dictate, worded from the predictions.

Pure (no I/O, no clock), so the same predictions always give the same text, and the text stored with a run is
exactly the text inside its SR. Safety wording is not optional: every text ends with the AI disclaimer line, and a
text built from an untrained (demonstration) model starts with a banner saying its findings are meaningless.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from models.card import ModelCard
from models.prediction import Prediction

UNTRAINED_BANNER = "DEMONSTRATION ONLY: produced by an untrained model; the findings below are meaningless."
NO_MODEL_LINE = "No applicable AI model ran on this study; no preliminary findings."
INDETERMINATE_PHRASE = "indeterminate (no class reached its threshold)"
_SIDES = {"R": "Right", "L": "Left"}
_SIDE_ORDER = {"R": 0, "L": 1, "image-left": 2, "image-right": 3, None: 4}


@dataclass(frozen=True)
class _Finding:
    """One prediction reduced to what the sentence needs."""

    phrase: str
    probability: float


def report_text(predictions: Sequence[Prediction], cards: Mapping[str, ModelCard]) -> str:
    """The report text for one study's predictions; ``cards`` are keyed by model name.

    One line per (task, laterality). With several images, the highest-probability non-indeterminate label wins and a
    disagreement between images is mentioned; a group whose images are all indeterminate says so.
    """
    for p in predictions:
        if p.model_name not in cards:
            raise ValueError(f"no model card for model {p.model_name!r}")
    lines: list[str] = []
    if any(p.untrained or cards[p.model_name].untrained for p in predictions):
        lines.append(UNTRAINED_BANNER)
    if not predictions:
        lines.append(NO_MODEL_LINE)
    for (task, side), group in _grouped(predictions).items():
        lines.append(_line(task, side, group, cards))
    lines.append(ai_line(predictions))
    return "\n".join(lines)


def ai_line(predictions: Sequence[Prediction]) -> str:
    """The closing disclaimer naming every model (name@version) that contributed."""
    models = sorted({f"{p.model_name}@{p.model_version}" for p in predictions})
    names = ", ".join(models) if models else "no model"
    return f"AI-generated preliminary text (predictd, {names}); not verified by a radiologist."


def task_heading(task: str, laterality: str | None = None) -> str:
    """ "hip_hardware", "R" → "Right hip hardware"; without laterality → "Hip hardware".

    A half image whose patient side is unknown ("image-left") → "Hip hardware, image-left half (side not determined)".
    """
    words = task.replace("_", " ").replace("-", " ").strip()
    if laterality in _SIDES:
        return f"{_SIDES[laterality]} {words.lower()}"
    if laterality:
        return f"{words.capitalize()}, {laterality} half (side not determined)"
    return words.capitalize()


def _grouped(predictions: Sequence[Prediction]) -> dict[tuple[str, str | None], list[Prediction]]:
    """Predictions by (task, laterality): tasks in order of first appearance, then right, left, unsided."""
    task_order: dict[str, int] = {}
    for p in predictions:
        task_order.setdefault(p.task, len(task_order))
    groups: dict[tuple[str, str | None], list[Prediction]] = {}
    for p in predictions:
        side = p.laterality.upper() if p.laterality and p.laterality.upper() in _SIDES else p.region
        groups.setdefault((p.task, side), []).append(p)
    return dict(sorted(groups.items(), key=lambda kv: (task_order[kv[0][0]], _SIDE_ORDER[kv[0][1]])))


def _line(task: str, side: str | None, group: Sequence[Prediction], cards: Mapping[str, ModelCard]) -> str:
    heading = task_heading(task, side)
    decided = [p for p in group if not p.is_indeterminate]
    if not decided:
        return f"{heading}: {INDETERMINATE_PHRASE}."
    best = max(decided, key=lambda p: p.probability)
    finding = _finding(best, cards)
    line = f"{heading}: {finding.phrase} (probability {finding.probability:.2f})."
    others: dict[str, int] = {}
    for p in decided:
        phrase = _finding(p, cards).phrase
        if phrase != finding.phrase:
            others[phrase] = others.get(phrase, 0) + 1
    undecided = len(group) - len(decided)
    if others or (undecided and len(group) > 1):
        parts = [f"{phrase} on {n} of {len(group)} images" for phrase, n in sorted(others.items())]
        if undecided:
            parts.append(f"indeterminate on {undecided} of {len(group)} images")
        line += " Images disagree: " + "; ".join(parts) + "."
    return line


def _finding(p: Prediction, cards: Mapping[str, ModelCard]) -> _Finding:
    card = cards[p.model_name]
    try:
        phrase = card.label(p.label).report_phrase
    except KeyError:
        raise ValueError(f"model {p.model_name!r} has no label {p.label!r}") from None
    return _Finding(phrase=phrase, probability=round(p.probability, 2))
