"""The reading room's wait: from a study's last image acknowledged to its SR stored in the PACS (Orthanc).

`predictd serve` as shipped (its queue and worker defaults: quiet window 10 s, release grace 1 s, workers woken by
commits, poll 5 s), the shipped models with key images on, Orthanc as the destination. Each study is one storescu
association with the real hip CR (RG2, ../shared) under new UIDs; the clock starts when storescu returns (the image
is acknowledged and the association released) and stops when Orthanc's REST API finds the study's SR (polled every
50 ms). Studies are sent one after another; p50, p95, min and max.

    python -m bench.latency --studies 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pydicom

from tests.e2e.orthanc import OrthancServer
from tests.e2e.predictd_proc import PredictdServer
from tests.integration.pipeline_helpers import copy_as_new_study
from tests.support import RG2_HIP_JLSL, wait_until


def run(studies: int, root: Path) -> list[float]:
    pacs = OrthancServer(root / "orthanc")
    destination = {"name": "pacs", "type": "dicom", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}
    waits: list[float] = []
    with pacs, PredictdServer(
        root / "predictd", destinations=[destination], shipped=True, key_images=True, quiet_seconds=10.0,
        serve_defaults=True, shipped_send=True,
    ) as server:  # fmt: skip
        for n in range(studies + 1):  # the first warms the engine (its first forward allocates): not counted
            src = copy_as_new_study(RG2_HIP_JLSL, root / f"study{n}.dcm")
            uid = str(pydicom.dcmread(src, stop_before_pixels=True).StudyInstanceUID)
            server.storescu(src)
            acked = time.monotonic()
            query = {"Level": "Instance", "Query": {"Modality": "SR", "StudyInstanceUID": uid}}
            wait_until(lambda q=query: pacs.rest_post("/tools/find", q), timeout=120, interval=0.05, what="the SR")
            if n:
                waits.append(time.monotonic() - acked)
    return waits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        waits = run(args.studies, Path(tmp))
    p95 = statistics.quantiles(waits, n=20)[-1] if len(waits) >= 2 else waits[0]
    print(
        f"last image acknowledged -> SR in Orthanc, {len(waits)} studies: p50 {statistics.median(waits):.2f} s, "
        f"p95 {p95:.2f} s, min {min(waits):.2f} s, max {max(waits):.2f} s"
    )


if __name__ == "__main__":
    main()
