"""Write tiny randomly initialised timm models with their cards: the demonstration model and test fixtures.

Until the training issue lands there is no trained model, yet the pipeline must run end to end. The
demonstration model is marked ``untrained`` so every report it produces says its findings are meaningless.
Tests use the same writer, so fixtures exercise the real card → weights → engine path rather than a mock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from predictd.models.card import Applicability, Label, ModelCard, Preprocessing, file_sha256
from predictd.models.loading import build_model

TINY_ARCH = "test_efficientnet"
"""timm's own test network: ~100k parameters (~0.4 MB), builds offline, milliseconds per image on CPU."""

DEMO_NAME = "demo_untrained_hip_hardware"
DEMO_TASK = "hip_hardware"
DEMO_LABELS: tuple[Label, ...] = (
    Label("none", "no hardware"),
    Label("tha", "total hip arthroplasty"),
    Label("hemiarthroplasty", "hemiarthroplasty"),
    Label("im_nail", "intramedullary nail"),
    Label("cannulated_screws", "femoral neck cannulated screws"),
    Label("dhs", "sliding/dynamic hip screw"),
    Label("blade_plate", "lateral blade or plate"),
    Label("tha_plus_fixation", "THA with additional femoral fixation"),
    Label("cement_spacer", "post-infectious hip (cement spacer)"),
)
"""The nine classes of the hip-hardware paper. Codes are left to reporting/codes.py."""

DEMO_DESCRIPTION = (
    "UNTRAINED DEMONSTRATION MODEL: random weights, never trained on any image. Its predictions are "
    "meaningless and must not be used clinically; it exists only so the pipeline (receive → classify → "
    "report → send) runs end to end. The training issue replaces it with a trained hip-hardware classifier."
)


def write_model(
    directory: Path,
    *,
    name: str,
    task: str,
    labels: Sequence[Label],
    arch: str = TINY_ARCH,
    version: str = "0.0.0",
    untrained: bool = True,
    input_size: int = 64,
    seed: int = 0,
    description: str = "",
    arch_kwargs: dict[str, Any] | None = None,
    temperature: float = 1.0,
    thresholds: dict[str, float] | None = None,
    applies_to: Applicability | None = None,
    bilateral: bool = False,
    role: str = "finding",
) -> ModelCard:
    """Write ``directory``/weights.safetensors and card.json for a randomly initialised ``arch``.

    Same seed, same weights (and same sha256). The weights are written before the card, because a directory
    with a card is what the engine treats as installed. Returns the saved card.
    """
    directory = Path(directory)
    card = ModelCard(
        name=name,
        version=version,
        task=task,
        arch=arch,
        labels=tuple(labels),
        preprocessing=Preprocessing(input_size=input_size),
        temperature=temperature,
        thresholds=dict(thresholds or {}),
        untrained=untrained,
        description=description,
        arch_kwargs=dict(arch_kwargs or {}),
        applies_to=applies_to or Applicability(),
        bilateral=bilateral,
        role=role,
    )
    with torch.random.fork_rng(devices=[]):  # deterministic init without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = build_model(card)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / card.weights_file
    safetensors.torch.save_file(state, str(weights))  # no metadata: its key order is random
    card = replace(card, sha256=file_sha256(weights))
    card.save(directory)
    return card


def install_demo(models_dir: Path) -> ModelCard:
    """Install (or overwrite) the untrained hip-hardware demonstration model in ``models_dir``/DEMO_NAME."""
    return write_model(
        Path(models_dir) / DEMO_NAME,
        name=DEMO_NAME,
        task=DEMO_TASK,
        labels=DEMO_LABELS,
        version="0.0.0",
        untrained=True,
        input_size=224,
        seed=0,
        description=DEMO_DESCRIPTION,
        # Like the real hip_hardware card: hips only, each side of an AP pelvis on its own.
        applies_to=Applicability(body_parts=("hip_pelvis", "femur")),
        bilateral=True,
    )
