"""Which domain-gate score separates a model's own images from the images it must refuse? (models/gate.py's choice)

For one model directory and its manifest: scores of the in-domain held-out images (a split the network did not train
on) against the out-of-domain probes of models.probes (plus other manifests and DICOM folders), for

- maximum softmax probability (MSP, Hendrycks & Gimpel 2017), negated so that higher means "more unlike";
- energy, -logsumexp of the logits (Liu et al. 2020);
- class-conditional Mahalanobis on the last stage only (Lee et al. 2018, penultimate features);
- the same on every stage, the largest stage score (models.gate's distance);
- with ``--outliers``: models.gate's outlier classifier alone, and both together (what a gated model ships).

For each: AUROC (in-domain negative, out-of-domain positive; scikit-learn) and the share of probes refused at the
threshold that keeps 95% of the in-domain images (the same coverage for every method).
The statistics come from the manifest's train split with augmented copies (and the outlier manifests' train+val
images), as ``predictd calibrate`` fits them; MSP and energy need no fit. The other manifests' *test* images are the
out-of-domain probes, so an outlier manifest is never measured on the images it was fitted with.

    python -m bench.gate_methods MODEL_DIR --data MANIFEST [--split val] [--outliers OTHER.csv] [--ood-data OTHER.csv]
        [--ood-dir DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from predictd.models import data, probes
from predictd.models.calibrate import gate_statistics, outlier_inputs, outputs
from predictd.models.gate import DomainGate, threshold_for
from predictd.models.loading import load_verified_resident
from predictd.models.preprocess import gray_to_input


def _split(records: list[data.Record], name: str) -> list[data.Record]:
    return [r for r in records if r.split == name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="val", help="in-domain images the network did not train on")
    parser.add_argument("--ood-data", type=Path, action="append", default=[])
    parser.add_argument("--ood-dir", type=Path, action="append", default=[])
    parser.add_argument("--outliers", type=Path, action="append", default=[])
    args = parser.parse_args()

    resident = load_verified_resident(args.model)
    card, model = resident.card, resident.model
    records = data.read_manifest(args.data)
    cpu = torch.device("cpu")
    train = _split(records, "train")
    x_train = torch.from_numpy(data.load_images(train, card.preprocessing))
    y_train = torch.tensor([card.label_keys.index(r.label) for r in train])
    found = probes.default_probes()
    for manifest in args.ood_data:  # the test split: never used for outlier exposure
        chosen = [r for r in data.read_manifest(manifest) if r.split == "test"]
        found += probes.manifest_images(chosen, f"other manifest {manifest.parent.name} (test)")
    for folder in args.ood_dir:
        found += probes.dicom_folder(folder)
    inside = outputs(model, torch.from_numpy(data.load_images(_split(records, args.split), card.preprocessing)), cpu)
    outside = outputs(
        model, torch.from_numpy(np.stack([gray_to_input(p.gray, card.preprocessing) for p in found])), cpu
    )

    outliers = outlier_inputs(args.outliers, card.preprocessing)
    full = gate_statistics(model, x_train, y_train, card.preprocessing, cpu, outliers=outliers)
    last = DomainGate(tuple((stats[-1],) for stats in full.members))

    def last_stage(features: list[list[np.ndarray]]) -> np.ndarray:
        return last.distances([[member[-1]] for member in features])

    def msp(logits: np.ndarray) -> np.ndarray:
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return -(z / z.sum(axis=1, keepdims=True)).max(axis=1)

    def energy(logits: np.ndarray) -> np.ndarray:
        top = logits.max(axis=1)
        return -(top + np.log(np.exp(logits - top[:, None]).sum(axis=1)))

    methods = {
        "msp": (msp(inside.logits), msp(outside.logits)),
        "energy": (energy(inside.logits), energy(outside.logits)),
        "mahalanobis, last stage": (last_stage(inside.features), last_stage(outside.features)),
        "mahalanobis, every stage": (full.distances(inside.features), full.distances(outside.features)),
    }
    if full.classifiers:
        methods["outlier classifier"] = (full.odds(inside.features), full.odds(outside.features))
        both = full.with_thresholds(full.distances(inside.features), full.odds(inside.features), 0.95)
        methods["both (shipped)"] = (both.scores(inside.features), both.scores(outside.features))
    results = {}
    for name, (ins, outs) in methods.items():
        threshold = threshold_for(ins, 0.95)
        auroc = roc_auc_score(np.r_[np.zeros(len(ins)), np.ones(len(outs))], np.r_[ins, outs])
        results[name] = {"auroc": round(float(auroc), 4), "refused": round(float(np.mean(outs > threshold)), 4),
                         "kept": round(float(np.mean(ins <= threshold)), 4)}  # fmt: skip
    print(json.dumps({"model": f"{card.name}@{card.version}", "in_domain": f"{args.split} n={len(inside.logits)}",
                      "out_of_domain_n": len(found), "methods": results}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
