"""The cascade on prepared images: routers first, then the finding cards that apply to each image, as Predictions.

Kept apart from models.cascade (which cards apply, from data alone) and from models.inference (the resident models,
the batched forward and the domain gate): this module decides which model reads which image, or which half of it,
and turns each model's answer into a :class:`~models.prediction.Prediction`, in a fixed order. It imports no torch:
the engine's forward comes in as ``read``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from predictd.models.card import ModelCard
from predictd.models.cascade import Classification, select_cards
from predictd.models.prediction import Prediction

if TYPE_CHECKING:
    from predictd.models.decode_pool import Prepared

__all__ = ["HALVES", "GateVerdict", "Read", "run_cascade"]


HALVES = ("image-left", "image-right")
"""Region names of the two halves a bilateral card reads (Prediction.region)."""

GateVerdict = tuple[float, float] | None
"""(score, threshold) of one input for a gated model; None for a model without a gate."""

Read = Callable[[ModelCard, np.ndarray], tuple[np.ndarray, Sequence[GateVerdict]]]
"""One model on stacked preprocessed inputs → calibrated probabilities (N, classes) and each input's gate verdict."""


def run_cascade(cards: Sequence[ModelCard], items: Sequence[Prepared], read: Read) -> Classification:
    """Routers first, then the finding cards that apply to each image; ``cards`` in the order models run.

    A router's decided answer is the image's body part for :func:`~models.cascade.select_cards` (else the tags).
    Bilateral cards read each half of the image on its own, with the half's patient side as laterality.
    Output order: image, then model name, then image-left before image-right half.
    """
    rows: list[tuple[int, str, int, Prediction]] = []
    body_parts: dict[int, str] = {}
    for card in cards:
        if card.role != "router":
            continue
        probs, verdicts = read(card, np.stack([it.inputs[card.preprocessing] for it in items]))
        for i, item in enumerate(items):
            uids = item.sop_instance_uid, item.series_instance_uid
            p = _prediction(card, *uids, probs[i], None, None, verdicts[i], item.content_problem)
            rows.append((i, card.name, 0, p))
            if p.is_decided:
                body_parts.setdefault(i, p.label)
    findings = [card for card in cards if card.role != "router"]
    selections = {i: select_cards(findings, item.header, body_parts.get(i)) for i, item in enumerate(items)}
    for card in findings:
        jobs: list[tuple[int, int, str | None, np.ndarray]] = []
        for i, item in enumerate(items):
            if card not in selections[i].cards:
                continue
            if card.bilateral and item.halves:
                jobs += [(i, h, side, inputs[card.preprocessing]) for h, (side, inputs) in enumerate(item.halves)]
            else:
                jobs.append((i, 0, item.laterality, item.inputs[card.preprocessing]))
        if not jobs:
            continue
        probs, verdicts = read(card, np.stack([job[3] for job in jobs]))
        for (i, half, side, _), row, gated in zip(jobs, probs, verdicts, strict=True):
            item = items[i]
            region = HALVES[half] if card.bilateral and item.halves else None
            uids = item.sop_instance_uid, item.series_instance_uid
            p = _prediction(card, *uids, row, side, region, gated, item.content_problem)
            rows.append((i, card.name, half, p))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return Classification(
        predictions=[r[3] for r in rows],
        selections={items[i].sop_instance_uid: s for i, s in selections.items()},
    )


def _prediction(
    card: ModelCard,
    sop_instance_uid: str,
    series_instance_uid: str,
    probs: np.ndarray,
    laterality: str | None,
    region: str | None,
    gated: GateVerdict = None,
    content_problem: str | None = None,
) -> Prediction:
    """The card's answer for one input: a label, "indeterminate" below threshold, "not_assessed" past the gate or
    when the pixels hold no radiograph (``content_problem``, models.content_check)."""
    keys = card.label_keys
    top = int(np.argmax(probs))
    top_p = float(probs[top])
    label = keys[top] if top_p >= card.thresholds.get(keys[top], 0.0) else Prediction.INDETERMINATE
    score, threshold = gated if gated is not None else (None, None)
    refused = score is not None and threshold is not None and not score <= threshold  # NaN fails the gate too
    if refused or content_problem is not None:
        label = Prediction.NOT_ASSESSED
    return Prediction(
        model_name=card.name,
        model_version=card.version,
        task=card.task,
        sop_instance_uid=sop_instance_uid,
        series_instance_uid=series_instance_uid,
        label=label,
        probability=top_p,
        probabilities={k: float(p) for k, p in zip(keys, probs, strict=True)},
        laterality=laterality,
        region=region,
        untrained=card.untrained,
        gate_score=score,
        gate_threshold=threshold,
        content_problem=content_problem,
    )
