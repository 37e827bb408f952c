"""The decode step's own cost for one image (the pixels already decoded): content boxes, inputs, the display image.

The shipped hip card on the real hip CR (RG2, ../shared), whole image and bilateral halves, without and with the
key-image display (``Plan.display_side``), the two interleaved in every round; min and median over the rounds.

    python -m bench.decode_step --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import pydicom

from predictd.models.card import ModelCard
from predictd.models.decode_pool import Plan, prepare
from predictd.models.install import shipped
from tests.support import RG2_HIP_JLSL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    prep = ModelCard.load(shipped()["hip_arthroplasty"]).preprocessing
    shown = Plan(whole=(prep,), halves=(prep,), display_side=1024)
    plans = {"without display": replace(shown, display_side=0), "with display": shown}
    ds = pydicom.dcmread(RG2_HIP_JLSL)
    _ = ds.pixel_array  # decoded once here: the figure is what the step adds to the decode
    times: dict[str, list[float]] = {name: [] for name in plans}
    for _round in range(args.rounds):
        for name, plan in plans.items():
            start = time.perf_counter()
            prepare(ds, plan)
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        print(f"{name:16s} min {min(values) * 1000:6.1f} ms   median {statistics.median(values) * 1000:6.1f} ms")


if __name__ == "__main__":
    main()
