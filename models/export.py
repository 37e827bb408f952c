"""Package a trained model directory for shipping: card + safetensors, half precision where it costs nothing.

Half precision halves the file; it is kept only when the fp16 weights (loaded back into the float32 network, as the
engine does) give the same label on every check image, probabilities within ``HALF_TOLERANCE`` and, for a gated
model, domain-gate scores within ``GATE_TOLERANCE``; otherwise the weights stay float32 and the card says why. The
gate file is copied as it is (float32: distances need the precision). ONNX is optional (it needs the ``onnx`` package).
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from predictd.models.calibrate import outputs
from predictd.models.card import ModelCard
from predictd.models.data import Record, load_images
from predictd.models.gate import DomainGate
from predictd.models.loading import load_verified_resident
from predictd.models.metrics import softmax
from predictd.models.train import write_model_dir

HALF_TOLERANCE = 0.01
"""Largest allowed change of any class probability when the weights are stored as fp16."""
GATE_TOLERANCE = 0.05
"""Largest allowed change of a domain-gate score (a log distance ratio: 5%, a twentieth of the spread of in-domain
scores) when the weights are stored as fp16. A change, not a verdict: the image that set the threshold sits exactly
on it, and any rounding would flip it."""
RANDOM_CHECKS = 8


class ExportError(RuntimeError):
    """The model cannot be exported as asked (e.g. ONNX without the onnx package)."""


@dataclass(frozen=True)
class ExportResult:
    card: ModelCard
    directory: Path
    half: bool
    max_probability_change: float
    onnx: Path | None


def _check_inputs(card: ModelCard, records: Sequence[Record]) -> torch.Tensor:
    """Real images when given (the behaviour that matters), else seeded noise of the right shape."""
    if records:
        return torch.from_numpy(load_images(records, card.preprocessing))
    prep = card.preprocessing
    gen = torch.Generator().manual_seed(0)
    return torch.randn((RANDOM_CHECKS, prep.in_chans, prep.input_size, prep.input_size), generator=gen)


def _half_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}


def _probability_change(
    card: ModelCard, model: torch.nn.Module, half: dict[str, torch.Tensor], x: torch.Tensor, gate: DomainGate | None
) -> tuple[float, bool]:
    """Largest probability change, and whether every label stayed the same (and every gate score within tolerance)."""
    rounded = copy.deepcopy(model)
    rounded.load_state_dict(half)  # copies into the float32 parameters, as the engine's load does
    cpu = torch.device("cpu")
    full, halved = outputs(model, x, cpu), outputs(rounded, x, cpu)
    p32 = softmax(full.logits, card.temperature)
    p16 = softmax(halved.logits, card.temperature)
    same = bool((p32.argmax(1) == p16.argmax(1)).all())
    if gate is not None:
        shift = np.abs(gate.scores(full.features) - gate.scores(halved.features)).max()
        same = same and bool(shift <= GATE_TOLERANCE)
    return float(np.abs(p32 - p16).max()), same


def _export_onnx(model: torch.nn.Module, card: ModelCard, path: Path) -> Path:
    try:
        import onnx  # noqa: F401  # torch's exporter needs it
        import onnxscript  # noqa: F401  # the dynamo exporter is built on it (the torchscript one is deprecated)
    except ImportError as exc:
        raise ExportError("ONNX export needs the onnx and onnxscript packages: pip install onnx onnxscript") from exc
    prep = card.preprocessing
    dummy = torch.zeros((1, prep.in_chans, prep.input_size, prep.input_size))
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
        dynamo=True,
        external_data=False,
    )
    return path


def export_model(
    model_dir: Path,
    out_dir: Path,
    *,
    half: bool = True,
    onnx: bool = False,
    check_records: Sequence[Record] = (),
    version: str | None = None,
) -> ExportResult:
    """Write ``out_dir`` (card.json + weights.safetensors [+ model.onnx]) from a verified model directory."""
    resident = load_verified_resident(Path(model_dir), "cpu")
    card, model = resident.card, resident.model
    state: dict[str, torch.Tensor] = {
        k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()
    }
    change, kept_half = 0.0, False
    export: dict[str, Any] = {"dtype": "float32", "checked_on": len(check_records) or f"{RANDOM_CHECKS} random inputs"}
    if half:
        candidate = _half_state(model)
        checks = _check_inputs(card, check_records)
        change, same_labels = _probability_change(card, model, candidate, checks, resident.gate)
        kept_half = same_labels and change <= HALF_TOLERANCE
        export["max_probability_change_fp16"] = round(change, 6)
        if kept_half:
            state, export["dtype"] = candidate, "float16"
        else:
            export["fp16_refused"] = (
                "labels or gate scores changed" if not same_labels else f"probabilities moved by {change:.4f}"
            )
    training = {**card.training, "export": export}
    exported = replace(card, version=version or card.version, training=training)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = _export_onnx(model, card, out_dir / "model.onnx") if onnx else None
    if card.gated:  # the gate goes along unchanged, its sha256 with it
        shutil.copyfile(Path(model_dir) / str(card.gate["file"]), out_dir / str(card.gate["file"]))
    written = write_model_dir(out_dir, exported, state)
    return ExportResult(written, out_dir, kept_half, change, onnx_path)
