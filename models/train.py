"""Train a card's timm model on a manifest, as the hip-hardware paper did, on CPU or GPU.

Staged fine-tuning (head only, then the whole network; the head stage runs only when ``init`` gives pretrained
weights, since freezing a random backbone teaches nothing), one-cycle learning rate with AdamW, augmentation
(models.augment), class-balanced sampling, AMP on a GPU, a checkpoint after every epoch that ``resume`` continues
from, early stopping on validation loss, a CSV log and a fixed seed. The images of a manifest are decoded once
into memory through the same preprocessing as inference (the sets this is for have hundreds to a few thousand
images). The result is a model directory (card, weights, domain gate) that the engine, ``predictd evaluate`` and
``predictd export`` read; the temperature and the gate's threshold come from the validation split (models.calibrate).
Cross-validated ensembles (``--folds``) run this trainer once per fold (models.crossval).
"""

from __future__ import annotations

import datetime as dt
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import timm
import torch
import torch.nn.functional as F

from predictd.models.augment import Augmentation, augment
from predictd.models.calibrate import calibrate_single, outlier_inputs, write_gate
from predictd.models.card import ModelCard
from predictd.models.data import Record, manifest_sha256
from predictd.models.init_weights import initial_model
from predictd.models.run_files import (
    BEST_WEIGHTS,
    CHECKPOINT,
    LOG_CSV,
    MODEL_DIR,
    append_log,
    save_atomic,
    write_model_dir,
)
from predictd.models.train_data import (
    Split,
    draw_batches,
    evaluate_loss,
    labels_for,
    load_split,
    predict_logits,
    usable,
)
from predictd.models.train_options import TrainError, TrainOptions, TrainResult

__all__ = [
    "BEST_WEIGHTS",
    "CHECKPOINT",
    "LOG_CSV",
    "MODEL_DIR",
    "TrainError",
    "TrainOptions",
    "TrainResult",
    "Trainer",
    "labels_for",
    "predict_logits",
    "write_model_dir",
]


class _OutOfTime(Exception):
    """The time budget ran out inside an epoch: that epoch is dropped, the last checkpoint stands."""


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _set_trainable(model: torch.nn.Module, head_only: bool) -> list[torch.nn.Parameter]:
    head = {id(p) for p in model.get_classifier().parameters()} if head_only else set()  # type: ignore[operator]
    for p in model.parameters():
        p.requires_grad_(not head_only or id(p) in head)
    return [p for p in model.parameters() if p.requires_grad]


def _stages(options: TrainOptions) -> list[tuple[str, int]]:
    stages = [("head", options.head_epochs)] if options.init and options.head_epochs > 0 else []
    return [*stages, ("full", options.epochs)]


class Trainer:
    """One training run in ``out``: construct it (or :meth:`resume` a saved one), then :meth:`run`."""

    def __init__(
        self,
        card: ModelCard,
        records: Sequence[Record],
        out: Path,
        options: TrainOptions,
        data_root: Path | None = None,
        progress: Callable[[str], None] | None = None,
        on_batch: Callable[[str, int, int], None] | None = None,
    ) -> None:
        """``progress`` gets one line per event (an epoch's losses); ``on_batch`` (epoch label, done, total) drives a
        progress bar, so a slow CPU epoch is visibly moving."""
        self.card = replace(card, labels=labels_for(card, records))
        self.records = list(records)
        self.out = Path(out)
        self.options = options
        self.data_root = data_root
        self.say = progress or (lambda message: None)
        self.on_batch = on_batch or (lambda label, done, total: None)
        self.device = _device(options.device)
        self.aug = Augmentation(hflip=not self.card.bilateral if options.hflip is None else options.hflip)
        self.data_sha256 = manifest_sha256(self.records, data_root)
        self.state: dict[str, Any] = {"stage": 0, "epoch": 0, "best_val_loss": math.inf, "best_epoch": 0, "bad": 0}
        self.state.update({"history": [], "done": False, "stopped_early": False})
        self.gen = torch.Generator().manual_seed(options.seed)
        _seed_everything(options.seed)
        self.model = initial_model(self.card, options.init).to(self.device)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.OneCycleLR | None = None
        self.deadline: float | None = None
        self.outliers: torch.Tensor | None = None

    # ---------------------------------------------------------------- checkpoints

    def _checkpoint(self) -> dict[str, Any]:
        assert self.optimizer is not None and self.scheduler is not None
        return {
            "card": self.card.to_dict(),
            "options": asdict(self.options),
            "data_sha256": self.data_sha256,
            "state": self.state,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    @classmethod
    def resume(
        cls,
        records: Sequence[Record],
        out: Path,
        data_root: Path | None = None,
        progress: Callable[[str], None] | None = None,
        max_minutes: float | None = None,
    ) -> Trainer:
        """Continue the run saved in ``out``/checkpoint.pt from the epoch after the last one it finished."""
        path = Path(out) / CHECKPOINT
        if not path.is_file():
            raise TrainError(f"nothing to resume: {path} does not exist")
        saved = torch.load(path, map_location="cpu", weights_only=True)
        options = replace(TrainOptions(**saved["options"]), init=None, max_minutes=max_minutes)
        trainer = cls(ModelCard.from_dict(saved["card"]), records, out, options, data_root, progress)
        if trainer.data_sha256 != saved["data_sha256"]:
            raise TrainError("the manifest's images, labels or splits differ from the run being resumed")
        trainer.options = replace(TrainOptions(**saved["options"]), max_minutes=max_minutes)
        trainer.model.load_state_dict(saved["model"])
        trainer.state = saved["state"]
        trainer._new_stage(resumed=saved)
        trainer.gen.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        return trainer

    # ---------------------------------------------------------------- the loop

    def _new_stage(self, resumed: dict[str, Any] | None = None, steps_per_epoch: int = 1) -> None:
        name, epochs = _stages(self.options)[self.state["stage"]]
        params = _set_trainable(self.model, head_only=name == "head")
        peak = self.options.lr * (5.0 if name == "head" else 1.0)
        self.optimizer = torch.optim.AdamW(params, lr=peak, weight_decay=self.options.weight_decay)
        steps = resumed["scheduler"]["total_steps"] if resumed else max(1, epochs * steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=peak, total_steps=steps)
        if resumed:
            self.optimizer.load_state_dict(resumed["optimizer"])
            self.scheduler.load_state_dict(resumed["scheduler"])

    def _train_epoch(self, train: Split, k: int, label: str) -> tuple[float, float]:
        assert self.optimizer is not None and self.scheduler is not None
        self.model.train()
        total, correct, seen = 0.0, 0, 0
        use_amp = self.options.amp and self.device.type == "cuda"
        batches = draw_batches(train, k, self.options, self.gen)
        for step, idx in enumerate(batches, start=1):
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise _OutOfTime
            x, y = train.x[idx], train.y[idx]
            if self.options.augment:
                x = augment(x, self.card.preprocessing, self.aug, self.gen)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device)
            n = y.numel()
            if self.outliers is not None:
                x = torch.cat([x, self._outlier_batch(max(1, n // 2)).to(self.device, non_blocking=True)])
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = self.model(x).float()
                logits = out[:n]
                loss = F.cross_entropy(logits, y, label_smoothing=self.options.label_smoothing)
                if self.outliers is not None:  # cross-entropy to the uniform distribution
                    loss = loss - self.options.outlier_weight * F.log_softmax(out[n:], dim=1).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.scheduler.last_epoch + 1 < self.scheduler.total_steps:
                self.scheduler.step()
            total += loss.item() * y.numel()
            correct += int((logits.argmax(1) == y).sum())
            seen += y.numel()
            self.on_batch(label, step, len(batches))
        return total / max(seen, 1), correct / max(seen, 1)

    def _outlier_batch(self, n: int) -> torch.Tensor:
        assert self.outliers is not None
        idx = torch.randint(len(self.outliers), (n,), generator=self.gen)
        batch = self.outliers[idx]
        return augment(batch, self.card.preprocessing, self.aug, self.gen) if self.options.augment else batch

    def _load_outliers(self) -> None:
        if not self.options.outliers:
            return
        self.outliers = outlier_inputs(self.options.outliers, self.card.preprocessing)
        if self.outliers is None:
            raise TrainError(f"no train or val images in the outlier manifests {list(self.options.outliers)}")
        self.say(f"{len(self.outliers)} outlier images (exposed towards a uniform answer)")

    def run(self) -> TrainResult:
        """Train to the end (or early stop, or the time budget); writes the model directory when finished."""
        self.out.mkdir(parents=True, exist_ok=True)
        k = len(self.card.labels)
        self.say(f"decoding images at {self.card.preprocessing.input_size} px")
        self._load_outliers()
        train, val = load_split(self.records, self.card, "train"), load_split(self.records, self.card, "val")
        if train.y.numel() == 0:
            raise TrainError("the manifest has no 'train' images")
        self.say(f"{train.y.numel()} train / {val.y.numel()} val images, {k} labels, device {self.device}")
        steps_per_epoch = math.ceil(usable(train.y.numel(), self.options.batch_size) / self.options.batch_size)
        if self.optimizer is None:
            self._new_stage(steps_per_epoch=steps_per_epoch)
        started = time.monotonic()
        if self.options.max_minutes is not None:
            self.deadline = started + 60.0 * self.options.max_minutes
        stages = _stages(self.options)
        while not self.state["done"]:
            name, epochs = stages[self.state["stage"]]
            if self.state["epoch"] >= epochs or (name == "full" and self.state["bad"] >= self.options.patience):
                self.state["stopped_early"] = self.state["epoch"] < epochs
                if self.state["stage"] + 1 >= len(stages):
                    self.state["done"] = True
                    break
                self.state.update(stage=self.state["stage"] + 1, epoch=0)
                self._new_stage(steps_per_epoch=steps_per_epoch)
                continue
            if self._out_of_time(started):
                self.say("time budget reached: checkpoint saved, continue with --resume")
                break
            try:
                self._epoch(name, train, val, k)
            except _OutOfTime:
                self.say("time budget reached within an epoch: that epoch dropped, continue with --resume")
                break
        return self._finish(train, val)

    def _out_of_time(self, started: float) -> bool:
        history = self.state["history"]
        if self.options.max_minutes is None or not history:
            return False
        per_epoch = float(history[-1]["seconds"])
        return (time.monotonic() - started + per_epoch) / 60.0 > self.options.max_minutes

    def _epoch(self, name: str, train: Split, val: Split, k: int) -> None:
        assert self.scheduler is not None
        tick = time.monotonic()
        lr = self.scheduler.get_last_lr()[0]
        epochs = _stages(self.options)[self.state["stage"]][1]
        train_loss, train_acc = self._train_epoch(train, k, f"{name} {self.state['epoch'] + 1}/{epochs}")
        val_loss, val_acc = evaluate_loss(self.model, val, self.device, self.options.batch_size)
        self.state["epoch"] += 1
        row = {"stage": name, "epoch": self.state["epoch"], "lr": lr, "train_loss": train_loss}
        row.update(train_acc=train_acc, val_loss=val_loss, val_acc=val_acc, seconds=time.monotonic() - tick)
        self.state["history"].append(row)
        append_log(self.out, row)
        monitored = val_loss if not math.isnan(val_loss) else train_loss
        if monitored < self.state["best_val_loss"]:
            self.state.update(best_val_loss=monitored, best_epoch=len(self.state["history"]), bad=0)
            weights = {k2: v.detach().float().contiguous().cpu() for k2, v in self.model.state_dict().items()}
            safetensors.torch.save_file(weights, str(self.out / BEST_WEIGHTS))
        elif name == "full":
            self.state["bad"] += 1
        save_atomic(self._checkpoint(), self.out / CHECKPOINT)
        self.say(
            f"{name} {self.state['epoch']}: train loss {train_loss:.3f} acc {train_acc:.3f} · "
            f"val loss {val_loss:.3f} acc {val_acc:.3f} · {row['seconds']:.0f} s"
        )

    def _finish(self, train: Split, val: Split) -> TrainResult:
        """Write RUN/model: the kept weights, temperature and gate from the validation split, the card.

        Also when the run stopped early for its time budget (``training.complete`` is then false): the best model
        so far is what the next command (evaluate, export) needs; ``--resume`` continues and rewrites it.
        """
        model_dir = self.out / MODEL_DIR
        result = TrainResult(
            model_dir=model_dir,
            card=self.card,
            best_epoch=int(self.state["best_epoch"]),
            best_val_loss=float(self.state["best_val_loss"]),
            epochs_run=len(self.state["history"]),
            stopped_early=bool(self.state["stopped_early"]),
            history=list(self.state["history"]),
        )
        if not (self.out / BEST_WEIGHTS).is_file():
            return result  # not one epoch finished
        done = bool(self.state["done"])
        if self.options.keep == "best" or not done:
            self.model.load_state_dict(safetensors.torch.load_file(str(self.out / BEST_WEIGHTS)))
        kept = {k2: v.detach().float().contiguous().cpu() for k2, v in self.model.state_dict().items()}
        card = self._final_card(1.0, result)
        card = replace(card, training={**card.training, "complete": done, "kept": self.options.keep})
        gate = None
        if val.y.numel() and self.options.coverage > 0:
            card, gate = calibrate_single(
                self.model, card, (train.x, train.y), (val.x, val.y), self.device, coverage=self.options.coverage,
                outliers=self.outliers,
            )  # fmt: skip
        metrics = {}
        if val.y.numel():
            logits = predict_logits(self.model, val.x, self.device, self.options.batch_size)
            accuracy = float((logits.argmax(1) == val.y).float().mean())
            metrics["val"] = {"split": "val", "n": int(val.y.numel()), "accuracy": {"value": accuracy, "ci": None}}
        card = replace(card, training={**card.training, "metrics": metrics})
        model_dir.mkdir(parents=True, exist_ok=True)
        if gate is not None:
            card = write_gate(model_dir, card, gate, self.options.coverage, "train split (gate statistics, with "
                              "augmented copies); threshold on the validation split", int(val.y.numel()))  # fmt: skip
        result.card = write_model_dir(model_dir, card, kept)
        state = "" if done else " (time budget: best so far)"
        self.say(f"model written to {model_dir}{state} (best epoch {result.best_epoch}, temperature "
                 f"{result.card.temperature:.2f}, gate {'on' if gate is not None else 'off'})")  # fmt: skip
        return result

    def _final_card(self, temperature: float, result: TrainResult) -> ModelCard:
        counts: dict[str, dict[str, int]] = {}
        for r in self.records:
            counts.setdefault(r.split or "unassigned", {}).setdefault(r.label, 0)
            counts[r.split or "unassigned"][r.label] += 1
        version = self.card.version if self.card.version not in ("", "0.0.0") else dt.date.today().strftime("%Y.%m.%d")
        training = {
            "data_sha256": self.data_sha256,
            "split_counts": counts,
            "seed": self.options.seed,
            "options": {k: v for k, v in asdict(self.options).items() if k not in ("device", "max_minutes")},
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early,
            "best_val_loss": result.best_val_loss,
            "trained": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "timm": timm.__version__,
        }
        return replace(
            self.card,
            version=version,
            untrained=False,
            temperature=temperature,
            thresholds={key: self.options.threshold for key in self.card.label_keys},
            training=training,
        )
