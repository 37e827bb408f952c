"""What a key image costs: in classify (where the pixels are decoded) and in the report stage, on the shipped hip model.

The shipped hip model on the real hip CR (RG2, ../shared), as `make serve` runs it (CPU). Each round times, for one
prediction: the decode step with and without the display image key images are drawn on (``Plan.display_side``),
the Grad-CAM overlay on the prepared inputs (``overlay_of``, in classify), the report stage's share (read the PNG,
build and write the Secondary Capture), and, as the peer, the same overlay made from the dataset the old way
(``explain_prediction``: decode again, then Grad-CAM), interleaved with a bare forward of the model that shows how
loaded the machine was. Min and median over the rounds, and the file's size.

    python -m bench.key_images --rounds 7
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from predictd.models.decode_pool import Plan, prepare
from predictd.models.explain_engine import KEY_IMAGE_SIDE, explain_prediction, overlay_of
from predictd.models.inference import Engine
from predictd.models.install import install_shipped
from predictd.reporting.key_images import build_key_image
from tests.support import RG2_HIP_JLSL

MODEL = "hip_arthroplasty"


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run(rounds: int, root: Path) -> dict[str, list[float]]:
    install_shipped(root, [MODEL])
    names = ["bare forward", "decode", "decode + display", "overlay (classify)", "report: png + SC", "peer: old path"]
    times: dict[str, list[float]] = {name: [] for name in names}
    size = 0
    with Engine.load(root, [MODEL], device="cpu") as engine:
        (prediction,) = engine.predict([pydicom.dcmread(RG2_HIP_JLSL)])
        card = engine.resident(MODEL).card
        plan = Plan(whole=(card.preprocessing,))
        shown = replace(plan, display_side=KEY_IMAGE_SIDE)
        header = pydicom.dcmread(RG2_HIP_JLSL, stop_before_pixels=True)
        for n in range(rounds):
            item = prepare(pydicom.dcmread(RG2_HIP_JLSL), plan)
            batch = item.inputs[card.preprocessing][np.newaxis]
            times["bare forward"].append(_timed(lambda batch=batch: engine.forward_only(batch, MODEL))[0])  # type: ignore[misc]
            times["decode"].append(_timed(lambda: prepare(pydicom.dcmread(RG2_HIP_JLSL), plan))[0])
            t, item = _timed(lambda: prepare(pydicom.dcmread(RG2_HIP_JLSL), shown))
            times["decode + display"].append(t)
            t, overlay = _timed(lambda item=item: overlay_of(engine, item, prediction))  # type: ignore[misc]
            times["overlay (classify)"].append(t)
            png = io.BytesIO()
            Image.fromarray(overlay, mode="RGB").save(png, format="PNG", compress_level=1)  # type: ignore[arg-type]
            path = root / f"sc{n}.dcm"

            def report(data: bytes = png.getvalue(), path: Path = path) -> None:
                with Image.open(io.BytesIO(data)) as image:
                    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
                build_key_image(header, prediction, card, rgb, sr_uid="2.25.1", instance_number=1).save_as(path)

            times["report: png + SC"].append(_timed(report)[0])
            size = path.stat().st_size
            times["peer: old path"].append(
                _timed(lambda: explain_prediction(engine, pydicom.dcmread(RG2_HIP_JLSL), prediction))[0]
            )
    print(f"key image: {overlay.shape[1]}x{overlay.shape[0]}, file {size / 1e6:.2f} MB")  # type: ignore[union-attr]
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
