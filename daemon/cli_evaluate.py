"""``predictd evaluate``: the figures of a model on one split of a manifest, and how it treats images it must refuse.

Apart from daemon/cli_training.py so that each command module stays one screenful of options and output; torch is
imported inside the command, so the rest of the CLI stays fast.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err = Console(stderr=True)


def evaluate(
    model: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Model folder (card.json + weights).")],
    data_path: Annotated[
        Path, typer.Option("--data", "-d", exists=True, dir_okay=False, help="Manifest CSV (predictd dataset).")
    ],
    split: Annotated[str, typer.Option(help="Split to measure: train, val, test or all.")] = "test",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full report as JSON.")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML report.")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% CIs.")] = 1000,
    record: Annotated[bool, typer.Option("--record", help="Write the headline figures into the model's card.")] = False,
    ood: Annotated[
        bool, typer.Option("--ood", help="Also measure refusals on out-of-domain probes (models.probes).")
    ] = False,
    ood_data: Annotated[
        list[Path] | None, typer.Option(help="Another manifest whose images this model must refuse (repeatable).")
    ] = None,
    ood_dir: Annotated[
        list[Path] | None, typer.Option(help="A folder of DICOM images this model must refuse (repeatable).")
    ] = None,
    ood_split: Annotated[
        str, typer.Option(help="Split of the --ood-data manifests to use (test: never used for outlier exposure).")
    ] = "test",
) -> None:
    """Accuracy, kappa, per-class precision/recall/F1/AUC with 95% CIs, calibration, the domain gate's coverage;
    with --ood, the share of out-of-domain images refused."""
    from predictd.models import data
    from predictd.models.card import CardError
    from predictd.models.evaluate import EvaluationError, evaluate_model, evaluate_ood
    from predictd.models.report_html import write_html

    records = data.read_manifest(data_path)
    try:
        report = evaluate_model(model, records, split, data_root=data_path.parent, n_boot=n_boot)
        if ood or ood_data or ood_dir:
            report["ood"] = evaluate_ood(model, _probes(ood_data or [], ood_dir or [], ood_split))
    except (EvaluationError, CardError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1) + "\n")
    if html_out:
        write_html(report, html_out)
    if record:
        _record(model, report, split)
    _print(report, split)


def _probes(manifests: list[Path], folders: list[Path], split: str) -> list[Any]:
    from predictd.models import data, probes

    found = probes.default_probes()
    for manifest in manifests:
        chosen = [r for r in data.read_manifest(manifest) if split == "all" or r.split == split]
        found += probes.manifest_images(chosen, f"other manifest {manifest.parent.name} ({split})")
    for folder in folders:
        found += probes.dicom_folder(folder)
    return found


def _record(model: Path, report: dict[str, Any], split: str) -> None:
    """Headline figures into the card (its weights, and so its sha256, do not change)."""
    from predictd.models.card import ModelCard
    from predictd.models.evaluate import summary

    card = ModelCard.load(model)
    metrics = {**card.training.get("metrics", {}), split: summary(report)}
    card = replace(card, training={**card.training, "metrics": metrics})
    if card.gated and (report.get("domain_gate") or report.get("ood")):
        evaluation = dict(card.gate.get("evaluation", {}))
        if report.get("domain_gate"):
            evaluation[f"{split}_coverage"] = report["domain_gate"]["coverage"]
            evaluation[f"{split}_accuracy_assessed"] = report["domain_gate"]["accuracy_assessed"]
        if report.get("ood"):
            found = report["ood"]
            kept = ("n", "refused", "refused_pixels", "refused_by", "labelled", "labelled_confident")
            evaluation["ood"] = {key: found[key] for key in kept}
            evaluation["ood"]["by_category"] = found["by_category"]
        card = replace(card, gate={**card.gate, "evaluation": evaluation})
    card.save(model)


def _print(report: dict[str, Any], split: str) -> None:
    table = Table("metric", "value", "95% CI")
    for key in ("accuracy", "kappa", "macro_f1"):
        value, (low, high) = report[key]["value"], report[key]["ci"]
        table.add_row(key, _fmt(value), f"{_fmt(low)}–{_fmt(high)}")
    table.add_row("ece", _fmt(report["ece"]), "")
    table.add_row("n", str(report["n"]), split)
    gate = report.get("domain_gate")
    if gate:
        table.add_row("gate coverage", _fmt(gate["coverage"]), f"target {gate['coverage_target']}")
        table.add_row("accuracy assessed", _fmt(gate["accuracy_assessed"]), f"n = {gate['n_assessed']}")
    found = report.get("ood")
    if found:
        by = ", ".join(f"{n} by {reason}" for reason, n in found["refused_by"].items())
        table.add_row("out-of-domain refused", _fmt(found["refused"]), f"n = {found['n']}: {by}")
        table.add_row("refused on pixels alone", _fmt(found["refused_pixels"]), "content check or gate")
        table.add_row("out-of-domain labelled ≥ 0.9", str(found["labelled_confident"]), "")
    console.print(table)
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
