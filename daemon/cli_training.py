"""``predictd dataset | train | evaluate | export``: from a site's labelled radiographs to a model it can install.

Kept apart from daemon/cli.py (the service's commands) because these are offline tools of the ML engineer; they
share the same ``predictd`` entry point. torch is imported inside each command, so the rest of the CLI stays fast.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from predictd.models.card import ModelCard
    from predictd.models.data import Record
    from predictd.models.train import Trainer, TrainOptions, TrainResult

console = Console()
err = Console(stderr=True)

ManifestOption = Annotated[
    Path, typer.Option("--data", "-d", exists=True, dir_okay=False, help="Manifest CSV (predictd dataset).")
]


def _fractions(text: str) -> tuple[float, float, float]:
    parts = [float(p) for p in text.replace("/", ",").split(",")]
    if len(parts) != 3:
        raise typer.BadParameter("give three numbers: train,val,test (e.g. 70,10,20)")
    return parts[0], parts[1], parts[2]


def dataset(
    source: Annotated[Path, typer.Argument(exists=True, help="Folder tree (label = folder), a CSV, or DICOM folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Manifest CSV to write.")],
    split: Annotated[str, typer.Option(help="train,val,test shares (patient-level, stratified).")] = "70,10,20",
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
    dicom_only: Annotated[bool, typer.Option("--dicom-only", help="Only DICOM files of a folder tree.")] = False,
    dedup: Annotated[
        int, typer.Option(help="Merge groups of near-duplicate images (dHash bits of 256; -1 turns it off).")
    ] = 10,
    keep_split: Annotated[bool, typer.Option(help="Keep a CSV's own split column instead of splitting.")] = False,
) -> None:
    """Build a manifest (path, label, group, split, reader columns); one patient or near-duplicate group per split."""
    from predictd.models import data

    try:
        if source.is_dir():
            records = data.from_dicom_dir(source) if dicom_only else data.from_folder_tree(source)
        else:
            records = data.from_csv(source)
        if dedup >= 0:
            records = data.near_duplicate_groups(records, threshold=dedup)
        if not (keep_split and all(r.split for r in records)):
            records = data.split(records, _fractions(split), seed=seed)
    except (data.DataError, ValueError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    data.write_manifest(records, out)
    counts = Counter((r.split, r.label) for r in records)
    labels = sorted({r.label for r in records})
    table = Table("split", *labels, "images", "groups")
    for name in data.SPLITS:
        groups = len({r.group for r in records if r.split == name})
        row = [counts[(name, label)] for label in labels]
        table.add_row(name, *(str(n) for n in row), str(sum(row)), str(groups))
    console.print(table)
    console.print(f"manifest → {out}")


PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "arch": "resnet10t",
        "arch_kwargs": {"channels": [24, 48, 96, 192]},
        "input_size": 224,
        "epochs": 60,
        "batch_size": 8,
        "lr": 1e-3,
    },
}
"""``--preset cpu``: the small network the shipped models use; about 6 s an epoch per 100 images on two CPU cores,
so a first model of a few hundred images is ready in minutes. Explicit options win over the preset."""
DEFAULTS: dict[str, Any] = {"epochs": 50, "batch_size": 16, "lr": 2e-3}


def train(
    data_path: ManifestOption,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: checkpoint, log.csv, model/.")],
    task: Annotated[
        str | None, typer.Option(help="Catalog task whose card to start from (predictd models catalog).")
    ] = None,
    card_file: Annotated[Path | None, typer.Option("--card", exists=True, dir_okay=False, help="A card.json.")] = None,
    preset: Annotated[str | None, typer.Option(help=f"Settings for a machine: {', '.join(PRESETS)}.")] = None,
    name: Annotated[str | None, typer.Option(help="Model name (default: the task's, with a '_site' suffix).")] = None,
    version: Annotated[str | None, typer.Option(help="Model version (default: today's date).")] = None,
    arch: Annotated[str | None, typer.Option(help="timm architecture (default: the card's).")] = None,
    arch_kwargs: Annotated[
        str | None,
        typer.Option(help="JSON keyword arguments for timm.create_model, e.g. '{\"channels\": [32, 64, 128, 256]}'."),
    ] = None,
    input_size: Annotated[int | None, typer.Option(help="Input side in pixels (default: the card's).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Whole-network epochs (default 50).")] = None,
    head_epochs: Annotated[int, typer.Option(help="Head-only epochs first (only with --init).")] = 4,
    batch_size: Annotated[int | None, typer.Option(help="Default 16.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak one-cycle learning rate (default 2e-3).")] = None,
    patience: Annotated[int, typer.Option(help="Early stopping: epochs without a lower validation loss.")] = 12,
    seed: Annotated[int, typer.Option()] = 0,
    init: Annotated[
        str | None,
        typer.Option(
            help="Pretrained weights: a safetensors/timm checkpoint (of an ensemble: its first member) or a timm name."
        ),
    ] = None,
    augment: Annotated[bool, typer.Option(help="Intensity, geometry, reframing, markers, bars, noise.")] = True,
    hflip: Annotated[
        bool | None, typer.Option(help="Horizontal flips (default: unless the card is bilateral).")
    ] = None,
    balanced: Annotated[bool, typer.Option(help="Class-balanced sampling.")] = True,
    crop: Annotated[bool, typer.Option(help="Crop uniform borders before resizing (as inference will).")] = True,
    folds: Annotated[
        int, typer.Option(help="K > 1: a cross-validated ensemble of K members on train+val (calibrated out of fold).")
    ] = 1,
    coverage: Annotated[
        float, typer.Option(help="Share of held-out in-domain images the domain gate lets through (0: no gate).")
    ] = 0.95,
    outliers: Annotated[
        list[Path] | None,
        typer.Option(
            help="Manifest of images the model must not label (outlier exposure; train+val only; repeatable)."
        ),
    ] = None,
    tta_zoom: Annotated[
        list[float] | None,
        typer.Option(
            help="With --folds: also read central zooms of each image, logits averaged (repeatable; 1.0 first)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    threshold: Annotated[float, typer.Option(help="Per-class threshold written into the card.")] = 0.5,
    max_minutes: Annotated[
        float | None, typer.Option(help="Stop with a checkpoint after this long (the best model so far is written).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run saved in --out.")] = False,
) -> None:
    """Train a card's timm model on the manifest's train split (early stopping, temperature and gate on val)."""
    from predictd.models import data
    from predictd.models.card import CardError, ModelCard
    from predictd.models.catalog import catalog, trained_description
    from predictd.models.train import Trainer, TrainError, TrainOptions

    records = data.read_manifest(data_path)
    root = data_path.parent
    say = console.print
    try:
        chosen = {**DEFAULTS, **_preset(preset)}
        for key, value in {"epochs": epochs, "batch_size": batch_size, "lr": lr}.items():
            if value is not None:
                chosen[key] = value
        options = TrainOptions(
            head_epochs=head_epochs,
            epochs=int(chosen["epochs"]),
            batch_size=int(chosen["batch_size"]),
            lr=float(chosen["lr"]),
            patience=patience,
            seed=seed,
            init=init,
            augment=augment,
            hflip=hflip,
            balanced=balanced,
            device=device,
            threshold=threshold,
            max_minutes=max_minutes,
            coverage=coverage,
            outliers=tuple(str(path.resolve()) for path in outliers or ()),
            tta_zooms=tuple(tta_zoom or (1.0,)),
        )
        if options.tta_zooms != (1.0,) and folds < 2:
            raise TrainError("--tta-zoom applies to a cross-validated ensemble (--folds 2 or more)")
        if resume and folds == 1:
            trainer = Trainer.resume(records, out, root, say, max_minutes=max_minutes)
            _finished(_run_with_progress_bar(trainer.run, trainer), out)
            return
        if (task is None) == (card_file is None):
            raise TrainError("give exactly one of --task or --card")
        templates = catalog()
        if task is not None and task not in templates:
            raise TrainError(f"unknown task {task!r}; known: {sorted(templates)}")
        card = templates[task] if task is not None else ModelCard.from_dict(json.loads(card_file.read_text()))  # type: ignore[union-attr]
        size = input_size or chosen.get("input_size")
        prep = replace(card.preprocessing, crop_content=crop)
        if size:
            prep = replace(prep, input_size=int(size))
        kwargs = json.loads(arch_kwargs) if arch_kwargs else chosen.get("arch_kwargs", card.arch_kwargs)
        card = replace(
            card,
            name=name or (f"{card.name}_site" if task is not None else card.name),
            version=version or "",
            arch=arch or chosen.get("arch", card.arch),
            arch_kwargs=kwargs,
            preprocessing=prep,
            description=trained_description(card.description),
        )
        if folds > 1:
            _train_folds(card, records, out, options, folds, root)
            return
        trainer = Trainer(card, records, out, options, root, say)
        _finished(_run_with_progress_bar(trainer.run, trainer), out)
    except (TrainError, CardError, data.DataError, OSError, json.JSONDecodeError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _preset(name: str | None) -> dict[str, Any]:
    from predictd.models.train import TrainError

    if name is None:
        return {}
    if name not in PRESETS:
        raise TrainError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return dict(PRESETS[name])


def _finished(result: TrainResult, out: Path) -> None:
    if not (result.model_dir / "card.json").is_file():
        console.print(f"no epoch finished: `predictd train --resume --data … --out {out}` continues")
        raise typer.Exit(3)
    card = result.card
    if not card.training.get("complete", True):
        console.print(
            f"time budget reached after {result.epochs_run} epochs: {result.model_dir} holds the best model so far; "
            f"`predictd train --resume --data … --out {out}` continues"
        )
    console.print(f"{card.name}@{card.version}: best epoch {result.best_epoch} → {result.model_dir}")


def _train_folds(
    card: ModelCard, records: list[Record], out: Path, options: TrainOptions, folds: int, root: Path
) -> None:
    from predictd.models.crossval import train_crossval

    holder: dict[str, Any] = {}

    def run() -> Any:
        holder["result"] = train_crossval(card, records, out, options, folds, root, console.print, holder.get("bar"))
        return holder["result"]

    result = _run_with_progress_bar(run, None, holder)
    if not result.complete:
        console.print(
            f"time budget reached with {result.folds_done} of {folds} members done: run the same command again "
            "to continue"
        )
        raise typer.Exit(3)
    calibration = result.card.training["calibration"]
    console.print(
        f"{result.card.name}@{result.card.version}: ensemble of {folds} → {result.model_dir} · out-of-fold accuracy "
        f"{calibration['accuracy']:.3f}, ECE {calibration['ece_after']:.3f}, temperature {result.card.temperature:.2f}"
    )


def calibrate(
    model: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Model folder (card.json + weights).")],
    data_path: ManifestOption,
    coverage: Annotated[float, typer.Option(help="Share of validation images the gate lets through.")] = 0.95,
    temperature: Annotated[bool, typer.Option(help="Also refit the temperature on the validation split.")] = True,
    outliers: Annotated[
        list[Path] | None,
        typer.Option(help="Manifest of images the model must refuse: trains the gate's outlier classifier."),
    ] = None,
) -> None:
    """Fit the domain gate (train split) and its threshold and the temperature (val split) of a trained model.

    For models trained elsewhere: the weights are not touched; the card and a gate file beside them are written.
    """
    from predictd.models import data
    from predictd.models.calibrate import calibrate_model
    from predictd.models.card import CardError

    records = data.read_manifest(data_path)
    try:
        card = calibrate_model(model, records, coverage=coverage, temperature=temperature, outliers=outliers or ())
    except (CardError, ValueError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    console.print(
        f"{card.name}@{card.version}: gate ({card.gate['method']}) "
        f"({coverage:.0%} of {card.gate['n_reference']} validation images pass), temperature {card.temperature:.2f}"
    )


def export(
    model: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Trained model folder.")],
    out: Annotated[Path, typer.Argument(help="Folder to write (card.json + weights.safetensors).")],
    half: Annotated[bool, typer.Option(help="fp16 weights when they change no label (checked).")] = True,
    onnx: Annotated[bool, typer.Option(help="Also write model.onnx (needs the onnx package).")] = False,
    data_path: Annotated[
        Path | None, typer.Option("--data", "-d", exists=True, dir_okay=False, help="Manifest for the fp16 check.")
    ] = None,
    split: Annotated[str, typer.Option(help="Split of --data used for the fp16 check.")] = "val",
    version: Annotated[str | None, typer.Option(help="Version to write into the card.")] = None,
) -> None:
    """Card + safetensors (fp16 where it costs no accuracy), optionally ONNX: a folder `models ls` can install."""
    from predictd.models import data
    from predictd.models.card import CardError
    from predictd.models.export import ExportError, export_model

    check = [r for r in data.read_manifest(data_path) if split == "all" or r.split == split] if data_path else []
    try:
        result = export_model(model, out, half=half, onnx=onnx, check_records=check, version=version)
    except (ExportError, CardError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    size = (out / result.card.weights_file).stat().st_size / 1e6
    dtype = result.card.training["export"]["dtype"]
    console.print(f"{result.card.name}@{result.card.version} → {out} ({dtype}, {size:.1f} MB)")
    if half and not result.half:
        console.print(f"[yellow]kept float32:[/yellow] {result.card.training['export'].get('fp16_refused')}")


def _run_with_progress_bar(
    run: Callable[[], Any], trainer: Trainer | None, holder: dict[str, Any] | None = None
) -> Any:
    """``run()`` with a bar over each epoch's batches on a terminal; plain epoch lines elsewhere (logs, CI)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task_id = bar.add_task("training", total=None)

        def on_batch(label: str, done: int, total: int) -> None:
            bar.update(task_id, description=label, completed=done, total=total)

        if trainer is not None:
            trainer.say = bar.console.print
            trainer.on_batch = on_batch
        if holder is not None:
            holder["bar"] = on_batch
        return run()
