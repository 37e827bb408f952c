"""Zoom test-time augmentation on a cross-validated run's held-out folds: log loss, accuracy and the largest framing
change of each member on the images it did not train on, without zooms and with a given zoom set.

Reproduces the table in models/shipped/README.md (the test split is never read):

    python -m bench.tta_zooms /work/runs/hip_cv3_oe models/shipped/hip_arthroplasty/manifest.csv --folds 3 \
        --zooms 1.0,0.97,0.94,0.91,0.88
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from predictd.models import data
from predictd.models.crossval import assign_folds, fold_names
from predictd.models.ensemble import Ensemble
from predictd.models.loading import load_verified
from predictd.models.metrics import log_loss, softmax
from predictd.models.preprocess import gray_to_input
from predictd.models.probes import framings


@torch.no_grad()
def member_figures(run: Path, manifest: Path, folds: int, fold: str, zooms: tuple[float, ...]) -> dict[str, float]:
    records = data.read_manifest(manifest)
    held = [r for r in records if assign_folds(records, folds, 0).get(r.path) == fold]
    card, net = load_verified(run / fold / "model")
    model = Ensemble([net], zooms).eval()
    y = np.array([card.label_keys.index(r.label) for r in held])
    first, worst, changed = [], [], 0
    for record in held:
        gray = data.load_gray(record.path)
        x = torch.from_numpy(np.stack([gray_to_input(v, card.preprocessing) for v in [gray, *framings(gray).values()]]))
        logits = model(x).numpy()
        p = softmax(logits)
        first.append(logits[0])
        worst.append(float(np.abs(p - p[0]).max()))
        changed += len(set(p.argmax(axis=1))) > 1
    probs = softmax(np.array(first))
    return {
        "n": len(held),
        "log_loss": log_loss(y, probs),
        "accuracy": float(np.mean(probs.argmax(axis=1) == y)),
        "largest_framing_change": max(worst),
        "labels_changed": changed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--folds", type=int, required=True)
    parser.add_argument("--zooms", default="1.0,0.97,0.94,0.91,0.88")
    args = parser.parse_args()
    zooms = tuple(float(z) for z in args.zooms.split(","))
    for fold in fold_names(args.folds):
        for label, chosen in (("none", (1.0,)), (args.zooms, zooms)):
            figures = member_figures(args.run, args.manifest, args.folds, fold, chosen)
            print(fold, label, {k: round(v, 3) for k, v in figures.items()})


if __name__ == "__main__":
    main()
