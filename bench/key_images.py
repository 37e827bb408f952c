"""What a key image costs the report stage: decode again, Grad-CAM + overlay, build + write the Secondary Capture.

The shipped hip model on the real hip CR (RG2, ../shared), as `make serve` runs it (CPU). Each round times the
three steps of ``daemon.report._key_images`` for one prediction, rounds interleaved with a bare forward of the same
model as the peer that shows how loaded the machine was; min and median over the rounds, and the file's size.

    python -m bench.key_images --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom

from predictd.models.explain_engine import explain_prediction
from predictd.models.inference import Engine
from predictd.models.install import install_shipped
from predictd.models.preprocess import gray_to_input, to_gray
from predictd.reporting.key_images import build_key_image
from tests.support import RG2_HIP_JLSL

MODEL = "hip_arthroplasty"


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run(rounds: int, root: Path) -> dict[str, list[float]]:
    install_shipped(root, [MODEL])
    times: dict[str, list[float]] = {"bare forward": [], "decode": [], "grad-cam + overlay": [], "build + write": []}
    sizes: list[int] = []
    with Engine.load(root, [MODEL], device="cpu") as engine:
        (prediction,) = engine.predict([pydicom.dcmread(RG2_HIP_JLSL)])
        card = engine.resident(MODEL).card
        batch = gray_to_input(to_gray(pydicom.dcmread(RG2_HIP_JLSL)), card.preprocessing)[np.newaxis]
        for n in range(rounds):
            times["bare forward"].append(_timed(lambda: engine.forward_only(batch, MODEL))[0])

            def decode() -> pydicom.Dataset:
                ds = pydicom.dcmread(RG2_HIP_JLSL)
                ds.pixel_array  # noqa: B018  (what the report stage pays: the pixels once more)
                return ds

            t, ds = _timed(decode)
            times["decode"].append(t)
            t, overlay = _timed(lambda ds=ds: explain_prediction(engine, ds, prediction))  # type: ignore[misc]
            times["grad-cam + overlay"].append(t)
            path = root / f"sc{n}.dcm"

            def build(ds: pydicom.Dataset = ds, overlay: np.ndarray = overlay, path: Path = path) -> None:  # type: ignore[assignment]
                build_key_image(ds, prediction, card, overlay, sr_uid="2.25.1", instance_number=1).save_as(path)

            times["build + write"].append(_timed(build)[0])
            sizes.append(path.stat().st_size)
    print(f"key image: {overlay.shape[1]}x{overlay.shape[0]} RGB, file {sizes[-1] / 1e6:.2f} MB")  # type: ignore[union-attr]
    for name, values in times.items():
        print(f"{name:20s} min {min(values) * 1000:7.1f} ms   median {statistics.median(values) * 1000:7.1f} ms")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args.rounds, Path(tmp))


if __name__ == "__main__":
    main()
