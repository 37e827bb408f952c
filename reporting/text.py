"""Prepopulated report text: the lines a radiologist would otherwise dictate, worded from the predictions.

Pure (no I/O, no clock), so the same predictions always give the same text, and the text stored with a run is
exactly the text inside its SR and HL7 message. One line per body region and side, findings of several tasks joined
("Right hip: total hip arthroplasty (probability 0.97); no hip fracture identified (probability 0.88)."); a card
that names no body region gets a line headed by its task ("Body part: hip or pelvis (probability 0.99).").
Probabilities are rounded once, here, to two decimals; every later use shows that rounded number.

Sites change the wording through Jinja2 templates in the config (``report.templates``), not code: ``line`` words one
line from its heading and findings, ``document`` arranges the lines. Safety wording is outside the templates and not
optional: a text from an untrained (demonstration) model starts with a banner saying its findings are meaningless,
and every text ends with the AI disclaimer line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from predictd.models.card import ModelCard
from predictd.models.prediction import Prediction

UNTRAINED_BANNER = "DEMONSTRATION ONLY: produced by an untrained model; the findings below are meaningless."
NO_MODEL_LINE = "No applicable AI model ran on this study; no preliminary findings."
INDETERMINATE_PHRASE = "indeterminate (no class reached its threshold)"
NOT_ASSESSED_PHRASE = "not assessed (the image is unlike those this model was trained on)"
"""For images the model's domain gate refused: never a class name, never a probability."""

LINE_TEMPLATE = (
    "{{ heading }}: "
    "{% for f in findings %}"
    "{{ f.phrase }}"
    "{% if f.probability is not none %} (probability {{ '%.2f' | format(f.probability) }}"
    "{% if f.disagreement %}; {{ f.disagreement }}{% endif %}){% endif %}"
    "{{ '; ' if not loop.last }}"
    "{% endfor %}."
)
"""The built-in wording of one line. Variables: heading, region, side, findings (each: task, label, phrase,
probability (None when indeterminate or not assessed), indeterminate, not_assessed, disagreement)."""
DOCUMENT_TEMPLATE = "{% for line in lines %}{{ line }}\n{% endfor %}"
"""The built-in arrangement: one line per region and side. Variables: lines (rendered), findings (all of them)."""
TEMPLATE_KEYS = ("line", "document")

_SIDES = {"R": "Right", "L": "Left"}
_SIDE_ORDER = {"R": 0, "L": 1, "image-left": 2, "image-right": 3, None: 4}
_REGION_WORDS = {
    "hip_pelvis": "hip",
    "forearm_wrist_hand": "wrist and hand",
    "leg_ankle_foot": "ankle and foot",
}
"""Body-part keys (models.body_part) that read badly as a heading; the others are used as they are ("shoulder")."""


@dataclass(frozen=True)
class Finding:
    """One task's result on one line, as a template sees it."""

    task: str
    label: str
    phrase: str
    probability: float | None
    """Rounded to two decimals, once; None when no image gave a class (indeterminate or not assessed)."""
    indeterminate: bool
    disagreement: str
    not_assessed: bool = False
    """Every image of the group was refused by the model's domain gate."""
    """"" or e.g. "images disagree: hemiarthroplasty on 1 of 3 images"."""


@dataclass(frozen=True)
class Line:
    heading: str
    region: str | None
    side: str | None
    findings: tuple[Finding, ...]


def report_text(
    predictions: Sequence[Prediction],
    cards: Mapping[str, ModelCard],
    templates: Mapping[str, str] | None = None,
) -> str:
    """The report text for one study's predictions; ``cards`` are keyed by model name, ``templates`` by TEMPLATE_KEYS.

    With several images of one task and side, the highest-probability non-indeterminate label wins and a
    disagreement between images is mentioned; a group whose images are all indeterminate says so.
    Raises ValueError for an unknown model or label, or a template that fails to render.
    """
    for p in predictions:
        if p.model_name not in cards:
            raise ValueError(f"no model card for model {p.model_name!r}")
    lines = report_lines(predictions, cards)
    templates = templates or {}
    try:
        line_template = _compile(templates.get("line", LINE_TEMPLATE))
        document_template = _compile(templates.get("document", DOCUMENT_TEMPLATE))
        rendered = [_one_line(line_template.render(**_line_context(line))) for line in lines]
        body = document_template.render(
            lines=rendered, findings=[_finding_context(f) for line in lines for f in line.findings]
        )
    except jinja2.TemplateError as exc:
        raise ValueError(f"report template failed: {exc}") from exc
    out: list[str] = []
    if any(p.untrained or cards[p.model_name].untrained for p in predictions):
        out.append(UNTRAINED_BANNER)
    out.extend(line.rstrip() for line in body.strip("\n").splitlines() if line.strip())
    if not predictions:
        out.append(NO_MODEL_LINE)
    out.append(ai_line(predictions))
    return "\n".join(out)


def not_assessed_text(reason: str, considered: Sequence[ModelCard]) -> str:
    """The report text of a study no installed model applies to: which models were considered and why none ran."""
    lines = [f"Not assessed by AI: {reason.rstrip('.')}."]
    if considered:
        described = [f"{card.name}@{card.version} ({_scope(card)})" for card in considered]
        lines.append(f"Models considered: {', '.join(described)}.")
    lines.append("AI-generated preliminary text (predictd, no model applied); not verified by a radiologist.")
    return "\n".join(lines)


def _scope(card: ModelCard) -> str:
    parts = [p.replace("_", " ") for p in card.applies_to.body_parts] or ["any body part"]
    views = f", views {'/'.join(card.applies_to.views)}" if card.applies_to.views else ""
    modalities = f", {'/'.join(card.applies_to.modalities)}" if card.applies_to.modalities else ""
    return f"{' or '.join(parts)}{views}{modalities}"


def check_templates(templates: Mapping[str, str]) -> None:
    """Raise ValueError naming the key of a template that is unknown, does not compile or does not render.

    Run when the config is loaded, so a typo stops ``predictd serve`` at start-up instead of failing studies later.
    """
    unknown = sorted(set(templates) - set(TEMPLATE_KEYS))
    if unknown:
        raise ValueError(f"unknown report template(s) {unknown}; known: {list(TEMPLATE_KEYS)}")
    sample = _sample_line()
    for key, source in templates.items():
        try:
            template = _compile(source)
            if key == "line":
                template.render(**_line_context(sample))
            else:
                template.render(lines=["Right hip: total hip arthroplasty (probability 0.97)."], findings=[])
        except jinja2.TemplateError as exc:
            raise ValueError(f"report template {key!r}: {exc}") from exc


def ai_line(predictions: Sequence[Prediction]) -> str:
    """The closing disclaimer naming every model (name@version) that contributed."""
    models = sorted({f"{p.model_name}@{p.model_version}" for p in predictions})
    names = ", ".join(models) if models else "no model"
    return f"AI-generated preliminary text (predictd, {names}); not verified by a radiologist."


def report_lines(predictions: Sequence[Prediction], cards: Mapping[str, ModelCard]) -> list[Line]:
    """Predictions reduced to lines: regions in order of first appearance, then right, left, unsided."""
    groups: dict[tuple[str, str | None], dict[str, list[Prediction]]] = {}
    for p in predictions:
        region = region_of(cards[p.model_name])
        side = p.laterality.upper() if p.laterality and p.laterality.upper() in _SIDES else p.region
        groups.setdefault((region or _task_words(p.task), side), {}).setdefault(p.task, []).append(p)
    order = {key[0]: i for i, key in reversed(list(enumerate(groups)))}
    lines = []
    for (place, side), by_task in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], _SIDE_ORDER[kv[0][1]])):
        first = next(iter(by_task.values()))[0]
        region = region_of(cards[first.model_name])
        findings = tuple(_finding(task, group, cards, named=region is not None) for task, group in by_task.items())
        lines.append(Line(heading=heading(place, side), region=region, side=side, findings=findings))
    return lines


def region_of(card: ModelCard) -> str | None:
    """The body region a card's findings are about ("hip", "shoulder"), or None for a card meant for any image."""
    parts = card.applies_to.body_parts
    if not parts:
        return None
    return _REGION_WORDS.get(parts[0], parts[0].replace("_", " "))


def heading(place: str, side: str | None = None) -> str:
    """ "hip", "R" → "Right hip"; "hip" → "Hip"; a half image of unknown side → "Hip, image-left half (side not …)"."""
    if side in _SIDES:
        return f"{_SIDES[side]} {place.lower()}"
    if side:
        return f"{place.capitalize()}, {side} half (side not determined)"
    return place.capitalize()


def _task_words(task: str) -> str:
    return task.replace("_", " ").replace("-", " ").strip()


def _finding(task: str, group: Sequence[Prediction], cards: Mapping[str, ModelCard], *, named: bool) -> Finding:
    """One task on one line. ``named``: the heading is a region, so an indeterminate result names its task."""
    decided = [p for p in group if p.is_decided]
    if not decided:
        refused = all(p.is_not_assessed for p in group)
        words = NOT_ASSESSED_PHRASE if refused else INDETERMINATE_PHRASE
        phrase = f"{_task_words(task)} {words}" if named else words
        label = Prediction.NOT_ASSESSED if refused else Prediction.INDETERMINATE
        return Finding(task, label, phrase, None, not refused, "", not_assessed=refused)
    best = max(decided, key=lambda p: p.probability)
    phrase = _phrase(best, cards)
    others: dict[str, int] = {}
    for p in decided:
        other = _phrase(p, cards)
        if other != phrase:
            others[other] = others.get(other, 0) + 1
    n_refused = sum(p.is_not_assessed for p in group)
    undecided = len(group) - len(decided) - n_refused
    parts = [f"{other} on {n} of {len(group)} images" for other, n in sorted(others.items())]
    if undecided and len(group) > 1:
        parts.append(f"indeterminate on {undecided} of {len(group)} images")
    if n_refused:
        parts.append(f"not assessed on {n_refused} of {len(group)} images")
    disagreement = "images disagree: " + ", ".join(parts) if parts else ""
    return Finding(task, best.label, phrase, round(best.probability, 2), False, disagreement)


def _phrase(p: Prediction, cards: Mapping[str, ModelCard]) -> str:
    try:
        return cards[p.model_name].label(p.label).report_phrase
    except KeyError:
        raise ValueError(f"model {p.model_name!r} has no label {p.label!r}") from None


def _line_context(line: Line) -> dict[str, Any]:
    return {
        "heading": line.heading,
        "region": line.region,
        "side": line.side,
        "findings": [_finding_context(f) for f in line.findings],
    }


def _finding_context(f: Finding) -> dict[str, Any]:
    return {
        "task": f.task,
        "label": f.label,
        "phrase": f.phrase,
        "probability": f.probability,
        "indeterminate": f.indeterminate,
        "not_assessed": f.not_assessed,
        "disagreement": f.disagreement,
    }


def _one_line(text: str) -> str:
    """A line template's output as one line: a site template's stray newlines must not split a finding."""
    return " ".join(text.split())


def _sample_line() -> Line:
    finding = Finding("hip_arthroplasty", "tha", "total hip arthroplasty", 0.97, False, "")
    return Line(heading="Right hip", region="hip", side="R", findings=(finding,))


@lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    """Sandboxed (a template comes from a config file, not from us) and strict: a misspelt variable is an error."""
    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    return env.from_string(source)
