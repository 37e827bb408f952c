"""Whole-pipeline throughput: studies per minute from the first image sent to the last SR stored in the PACS (Orthanc).

`predictd serve` as shipped (serve defaults, shipped models), Orthanc as the destination, N one-image studies (the
real hip CR, RG2 from ../shared, under new UIDs) sent one storescu association each, as fast as storescu goes. The
clock starts before the first send and stops when Orthanc's REST API lists every study's SR (polled every 0.2 s).
Rounds alternate key images on and off (each a fresh daemon and PACS; the first study of each warms the engine and
is not counted), so the two are compared under the same load; min and median over the rounds.

    python -m bench.throughput --studies 50 --rounds 2
    python -m bench.throughput --studies 40 --rounds 3 --peer contiguous   # key images on, channels-last vs not

``--peer contiguous``: rounds alternate the shipped settings and ``models.channels_last = false`` instead, both
with key images on.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tests.e2e.orthanc import OrthancServer
from tests.e2e.predictd_proc import PredictdServer
from tests.integration.pipeline_helpers import copy_as_new_study
from tests.support import RG2_HIP_JLSL, wait_until


def one_round(root: Path, studies: int, key_images: bool, env: dict[str, str] | None = None) -> float:
    """Studies per minute of one fresh daemon (``env``: settings overridden by PREDICTD_… variables)."""
    files = [copy_as_new_study(RG2_HIP_JLSL, root / f"study{n}.dcm") for n in range(studies + 1)]
    pacs = OrthancServer(root / "orthanc")
    destination = {"name": "pacs", "type": "dicom", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}
    with pacs, PredictdServer(
        root / "predictd", destinations=[destination], shipped=True, key_images=key_images, quiet_seconds=10.0,
        serve_defaults=True, shipped_send=True, env=env,
    ) as server:  # fmt: skip
        server.storescu(files[0])  # warms the engine: not counted
        wait_until(lambda: _srs(pacs) == 1, timeout=120, interval=0.1, what="the warm-up SR")
        start = time.monotonic()
        for path in files[1:]:
            server.storescu(path)
        wait_until(lambda: _srs(pacs) == studies + 1, timeout=60 * studies, interval=0.2, what="every SR")
        return studies * 60.0 / (time.monotonic() - start)


def _srs(pacs: OrthancServer) -> int:
    """SR instances in Orthanc: one per study (one run each; key images are Secondary Captures)."""
    return len(pacs.rest_post("/tools/find", {"Level": "Instance", "Query": {"Modality": "SR"}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--peer", choices=["key-images-off", "contiguous"], default="key-images-off")
    args = parser.parse_args()
    variants: dict[str, tuple[bool, dict[str, str]]] = {"key images on": (True, {})}
    if args.peer == "contiguous":
        variants["key images on, contiguous"] = (True, {"PREDICTD_MODELS__CHANNELS_LAST": "false"})
    else:
        variants["key images off"] = (False, {})
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (key_images, env) in variants.items():
            with tempfile.TemporaryDirectory() as tmp:
                rates[name].append(one_round(Path(tmp), args.studies, key_images, env))
            print(f"{name}: {rates[name][-1]:.1f} studies/min", flush=True)
    for name, values in rates.items():
        print(f"{name:26s} {args.studies} studies: min {min(values):.1f}  median {statistics.median(values):.1f} /min")


if __name__ == "__main__":
    main()
