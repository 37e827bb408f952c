"""Channels-last memory layout on CPU: the engine's whole model call (forward, stage features, domain gate) of each
shipped model, and a bare forward of timm architectures the catalog uses, in both layouts.

Rounds interleave the two layouts (the machine is shared and noisy); min and median per call, and the largest
difference of their outputs.

    python -m bench.channels_last --rounds 15
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import numpy as np
import timm
import torch

from predictd.models.inference import Engine
from predictd.models.install import shipped


def _timed(call: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    call(*args)
    return time.perf_counter() - start


def _report(name: str, times: dict[str, list[float]], difference: float) -> None:
    cells = [
        f"{layout} min {min(t) * 1e3:6.1f} ms median {statistics.median(t) * 1e3:6.1f} ms"
        for layout, t in times.items()
    ]
    print(f"{name:40s} {'   '.join(cells)}   max |difference| {difference:.1e}")


def shipped_models(rounds: int) -> None:
    folder = next(iter(shipped().values())).parent
    engines = {layout: Engine.load(folder, device="cpu", channels_last=layout == "channels-last")
               for layout in ("contiguous", "channels-last")}  # fmt: skip
    for card in engines["contiguous"].cards:
        size = card.preprocessing.input_size
        batch = np.random.default_rng(0).normal(size=(1, card.preprocessing.in_chans, size, size)).astype(np.float32)
        times: dict[str, list[float]] = {layout: [] for layout in engines}
        outputs = {layout: engine.probabilities(card, batch)[0] for layout, engine in engines.items()}
        for _ in range(rounds):
            for layout, engine in engines.items():
                times[layout].append(_timed(engine.probabilities, card, batch))
        _report(
            f"{card.name} (engine call, 1 image)",
            times,
            float(np.abs(outputs["contiguous"] - outputs["channels-last"]).max()),
        )


def timm_architectures(rounds: int) -> None:
    for arch, size in (("efficientnet_b0", 384), ("resnet18", 224)):
        contiguous = timm.create_model(arch, pretrained=False, num_classes=3, in_chans=1).eval()
        last = copy.deepcopy(contiguous).to(memory_format=torch.channels_last)
        x = torch.randn(2, 1, size, size)
        xl = x.contiguous(memory_format=torch.channels_last)
        times: dict[str, list[float]] = {"contiguous": [], "channels-last": []}
        with torch.inference_mode():
            difference = float((contiguous(x) - last(xl)).abs().max())
            for _ in range(rounds):
                times["contiguous"].append(_timed(contiguous, x))
                times["channels-last"].append(_timed(last, xl))
        _report(f"{arch} @{size} (bare forward, 2 images)", times, difference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    shipped_models(args.rounds)
    timm_architectures(args.rounds)


if __name__ == "__main__":
    main()
