"""``predictd models``: install, list, explain and describe the models (the shipped ones, the catalog's templates).

torch is imported only inside the commands that run a model, so the others answer fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from predictd.daemon.cli_common import (
    ConfigOption,
    JsonOption,
    audit_if_possible,
    console,
    err,
    fail,
    print_json,
    settings_for,
)

models_app = typer.Typer(help="Installed models.", no_args_is_help=True)


@models_app.command("install-demo")
def models_install_demo(
    config: ConfigOption = None,
    if_missing: Annotated[bool, typer.Option("--if-missing", help="Do nothing when any model is installed.")] = False,
) -> None:
    """Install an UNTRAINED demonstration model (its reports say its findings are meaningless)."""
    from predictd.models.card import find_cards
    from predictd.models.demo import install_demo

    models_dir = settings_for(config).models.dir
    if if_missing and find_cards(models_dir):
        console.print(f"models already installed in {models_dir}")
        return
    card = install_demo(models_dir)
    console.print(f"installed {card.name}@{card.version} (untrained demonstration) in {models_dir}")


@models_app.command("install")
def models_install(
    models: Annotated[
        list[str] | None, typer.Argument(help="Shipped model names (default: every shipped model).")
    ] = None,
    config: ConfigOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an installed model of the same name.")] = False,
) -> None:
    """Install the models that ship with predictd (trained by the project; see `predictd models shipped`)."""
    from predictd.models.card import CardError
    from predictd.models.install import install_shipped

    settings = settings_for(config)
    models_dir = settings.models.dir
    try:
        installed = install_shipped(models_dir, models or (), overwrite=overwrite)
    except CardError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    for card in installed:
        console.print(f"installed {card.name}@{card.version} in {models_dir}")
    if installed:
        from predictd.daemon.audit import operator_action

        models = [f"{card.name}@{card.version}" for card in installed]
        audit_if_possible(settings, operator_action("models install", models=models, models_dir=str(models_dir)))
    if not installed:
        console.print(f"nothing to install: already in {models_dir} (--overwrite replaces them)")


@models_app.command("shipped")
def models_shipped(as_json: JsonOption = False) -> None:
    """Models trained by this project and shipped with it, with the accuracy measured on their own test split."""
    from predictd.models.card import ModelCard
    from predictd.models.install import shipped

    rows = []
    for name, path in sorted(shipped().items()):
        card = ModelCard.load(path)
        test = card.training.get("metrics", {}).get("test", {})
        accuracy = test.get("accuracy", {})
        rows.append(
            {
                "name": name,
                "version": card.version,
                "arch": card.arch,
                "input_size": card.preprocessing.input_size,
                "labels": card.label_keys,
                "test_n": test.get("n"),
                "test_accuracy": accuracy.get("value"),
                "test_accuracy_ci": accuracy.get("ci"),
                "test_ece": test.get("ece"),
                **_gate_figures(card),
            }
        )
    if as_json:
        print_json(rows)
        return
    table = Table("name", "version", "arch", "test n", "test accuracy (95% CI)", "ECE", "gate coverage", "OOD refused")
    for r in rows:
        low, high = r["test_accuracy_ci"] or [None, None]
        shown = _three(r["test_accuracy"])
        if low is not None and high is not None:
            shown += f" ({low:.3f}–{high:.3f})"
        refused = _three(r["ood_refused"])
        if r["ood_n"]:
            refused += f" of {r['ood_n']} ({_three(r['ood_refused_pixels'])} on pixels alone)"
            refused += f", {r['ood_labelled_confident']} labelled ≥ 0.9"
        table.add_row(
            r["name"], r["version"], r["arch"], str(r["test_n"]), shown, _three(r["test_ece"]),
            _three(r["gate_test_coverage"]), refused,
        )  # fmt: skip
    console.print(table)


def _three(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _gate_figures(card: Any) -> dict[str, Any]:
    """The domain gate's measured figures from a card (``predictd evaluate --ood --record``)."""
    evaluation = card.gate.get("evaluation", {}) if card.gated else {}
    ood = evaluation.get("ood", {})
    return {
        "gate": card.gate.get("method") if card.gated else None,
        "gate_test_coverage": evaluation.get("test_coverage"),
        "ood_n": ood.get("n"),
        "ood_refused": ood.get("refused"),
        "ood_refused_pixels": ood.get("refused_pixels"),
        "ood_labelled_confident": ood.get("labelled_confident"),
    }


@models_app.command("ls")
def models_ls(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Model cards found in the models directory."""
    from predictd.models.card import ModelCard, find_cards

    settings = settings_for(config)
    folders = find_cards(settings.models.dir)
    cards = [ModelCard.load(p) for p in folders]
    rows = [
        {
            "name": c.name,
            "version": c.version,
            "task": c.task,
            "arch": c.arch,
            "labels": len(c.labels),
            "untrained": c.untrained,
            "gated": c.gated,
            "enabled": not settings.models.enabled or c.name in settings.models.enabled,
        }
        for c in cards
    ]
    if as_json:
        print_json(rows)
    else:
        table = Table("name", "version", "task", "arch", "labels", "untrained", "gated", "enabled")
        for r in rows:
            table.add_row(*(str(v) for v in r.values()))
        console.print(table)
    seen: dict[str, Path] = {}
    clashes = []
    for folder, card in zip(folders, cards, strict=True):
        if card.name in seen:
            clashes.append(f"model name {card.name!r} is used by both {seen[card.name]} and {folder}")
        seen.setdefault(card.name, folder)
    for clash in clashes:
        err.print(f"[red]error:[/red] {clash}: the daemon will not start; rename one (`predictd train --name`)")
    if clashes:
        raise typer.Exit(1)


@models_app.command("explain")
def models_explain(
    dicom_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A DICOM image.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Name of an installed model.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")],
    config: ConfigOption = None,
    label: Annotated[str | None, typer.Option(help="Label to explain; default the predicted one.")] = None,
) -> None:
    """Grad-CAM of one model on one image, as a PNG overlay a person can look at."""
    import pydicom

    from predictd.models.card import ModelCard, find_cards
    from predictd.models.explain import overlay_png
    from predictd.models.explain_engine import explain
    from predictd.models.inference import Engine
    from predictd.models.preprocess import to_gray

    settings = settings_for(config)
    installed = sorted(ModelCard.load(folder).name for folder in find_cards(settings.models.dir))
    if model not in installed:
        fail(f"no model {model!r} in {settings.models.dir} (installed: {', '.join(installed) or 'none'})")
    ds = pydicom.dcmread(dicom_file)
    with Engine.load(settings.models.dir, [model], device=settings.models.device) as engine:
        card = next(c for c in engine.cards if c.name == model)
        heat = explain(engine, ds, model, label)
        prediction = next(p for p in engine.predict([ds]) if p.model_name == model)
    overlay_png(to_gray(ds, card.preprocessing.window), heat, out)
    console.print(
        f"{model}: {prediction.label} ({prediction.probability:.2f}); heat map of {label or prediction.label} → {out}"
    )


@models_app.command("catalog")
def models_catalog(as_json: JsonOption = False) -> None:
    """Card templates for every task predictd knows (train weights for them with the toolkit)."""
    from predictd.models.catalog import catalog

    rows = [
        {
            "task": task,
            "arch": card.arch,
            "input_size": card.preprocessing.input_size,
            "labels": card.label_keys,
            "body_parts": list(card.applies_to.body_parts),
            "bilateral": card.bilateral,
            "role": card.role,
        }
        for task, card in catalog().items()
    ]
    if as_json:
        print_json(rows)
        return
    table = Table("task", "arch", "input_size", "labels", "body_parts", "bilateral", "role")
    for r in rows:
        table.add_row(*(", ".join(v) if isinstance(v, list) else str(v) for v in r.values()))
    console.print(table)
