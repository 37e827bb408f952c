"""From a model directory to a resident, verified network: card checks, sha256 of weights and gate, the timm build.

Kept apart from models.inference (which batches, decodes and runs the forward) so that what it means for a model to be
trustworthy enough to load lives in one place: a card that is complete, weights and gate that are exactly the files
the card was written for, and one enabled card per name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import timm
import torch

from predictd.models.card import CardError, ModelCard, file_sha256, find_cards
from predictd.models.ensemble import Ensemble
from predictd.models.gate import DomainGate, GateError


class NoModelsError(RuntimeError):
    """No model card is installed: the daemon can still receive and keep images, but not classify them."""


@dataclass(frozen=True)
class Resident:
    card: ModelCard
    model: torch.nn.Module
    """The eager module (Grad-CAM needs it: gradients through a compiled graph are not worth the trouble)."""
    runner: Callable[[torch.Tensor], torch.Tensor]
    """What predict calls: ``model`` itself, or its ``torch.compile`` wrapper."""
    gate: DomainGate | None = None
    """The card's domain gate; None when the model has none (every image is assessed)."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return resolved


def _verified_file(directory: Path, card: ModelCard, name: str, sha256: str, what: str) -> Path:
    """``directory / name``, only if it is exactly the file the card was written for."""
    path = directory / name
    if not sha256:
        raise CardError(f"model {card.name}: card in {directory} has no sha256 for its {what}; refusing it unverified")
    if not path.is_file():
        raise CardError(f"model {card.name}: {what} file {path} is missing")
    actual = file_sha256(path)
    if actual != sha256.lower():
        raise CardError(f"model {card.name}: sha256 of {path} is {actual}, card says {sha256}")
    return path


def build_network(card: ModelCard) -> torch.nn.Module:
    """One network of the card's timm architecture, randomly initialised."""
    try:
        return timm.create_model(
            card.arch,
            pretrained=False,
            num_classes=len(card.labels),
            in_chans=card.preprocessing.in_chans,
            **card.arch_kwargs,
        )
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CardError(f"model {card.name}: cannot build timm architecture {card.arch!r}: {exc}") from exc


def build_model(card: ModelCard) -> torch.nn.Module:
    """The card's model, randomly initialised: one network, or an Ensemble of ``card.members`` of them."""
    if card.members == 1:
        return build_network(card)
    return Ensemble([build_network(card) for _ in range(card.members)], card.tta_zooms)


def load_gate(directory: Path, card: ModelCard) -> DomainGate | None:
    """The card's domain gate, verified like the weights; None when the card has none."""
    if not card.gated:
        return None
    path = _verified_file(directory, card, str(card.gate["file"]), str(card.gate["sha256"]), "gate")
    try:
        gate = DomainGate.load(path)
    except GateError as exc:
        raise CardError(f"model {card.name}: {exc}") from exc
    if len(gate.members) != card.members:
        raise CardError(f"model {card.name}: gate has {len(gate.members)} networks, the card {card.members}")
    if abs(gate.distance_threshold - float(card.gate["distance_threshold"])) > 1e-6:
        raise CardError(f"model {card.name}: gate threshold {gate.distance_threshold} differs from the card's")
    return gate


def load_resident(
    directory: Path, card: ModelCard, device: torch.device, channels_last: bool = False, compile_model: bool = False
) -> Resident:
    card.check_loadable()
    weights = _verified_file(directory, card, card.weights_file, card.sha256, "weights")
    gate = load_gate(directory, card)
    model = build_model(card)
    try:
        state = safetensors.torch.load_file(str(weights))
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, safetensors.SafetensorError) as exc:
        raise CardError(f"model {card.name}: weights {weights} do not fit {card.arch}: {exc}") from exc
    model.to(device).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    runner: Callable[[torch.Tensor], torch.Tensor] = model
    if compile_model and gate is None:  # a gated model runs eager: its stage features come from forward hooks
        runner = torch.compile(model, dynamic=False)
    return Resident(card, model, runner, gate)


def load_verified(directory: Path, device: str = "cpu") -> tuple[ModelCard, torch.nn.Module]:
    """One model directory as (card, eval-mode module), weights checked by sha256: for evaluation and export."""
    resident = load_verified_resident(directory, device)
    return resident.card, resident.model


def load_verified_resident(directory: Path, device: str = "cpu") -> Resident:
    """One model directory as a :class:`Resident` (card, eval-mode module, gate), every file checked by sha256."""
    card = ModelCard.load(Path(directory))
    return load_resident(Path(directory), card, resolve_device(device))


def select_installed(models_dir: Path, enabled: Sequence[str]) -> list[tuple[Path, ModelCard]]:
    """(directory, card) of every installed model, or of the ``enabled`` names; two cards of one name are refused."""
    dirs = find_cards(models_dir)
    if not dirs:
        raise NoModelsError(
            f"no model card (card.json) found under {models_dir}; "
            "`predictd models install` installs the models predictd ships, `predictd models install-demo` an "
            "untrained demonstration model"
        )
    found: dict[str, tuple[Path, ModelCard]] = {}
    for directory in dirs:
        card = ModelCard.load(directory)
        if card.name in found:
            raise CardError(
                f"model name {card.name!r} is used by both {found[card.name][0]} and {directory}: "
                "rename one (`predictd train --name`) or remove it"
            )
        found[card.name] = (directory, card)
    if not enabled:
        return [found[name] for name in sorted(found)]
    missing = [name for name in enabled if name not in found]
    if missing:
        installed = sorted(found)
        raise CardError(f"enabled model(s) {missing} not found under {models_dir} (installed: {installed})")
    return [found[name] for name in sorted(set(enabled))]
