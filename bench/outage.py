"""A destination outage, end to end: how long after the PACS comes back is every pending SR delivered?

`predictd serve` with the shipped delivery settings (backoff, probe, give-up by age) sends its SRs to a real Orthanc.
Orthanc is stopped, ``--studies`` studies are sent to predictd with storescu, Orthanc stays down ``--outage``
seconds, then starts again on the same ports. The figure is the time from Orthanc answering again to the last SR
stored in it (the goal of issue 12: at most 30 s after a 120 s outage), per study and overall.

    python -m bench.outage --studies 5 --outage 120
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pydicom

from tests.e2e.orthanc import OrthancServer
from tests.e2e.predictd_proc import PredictdServer
from tests.integration.pipeline_helpers import copy_as_new_study
from tests.support import RG2_HIP_JLSL, wait_until


def _srs_by_study(pacs: OrthancServer) -> dict[str, float]:
    return {pacs.simplified_tags(i)["StudyInstanceUID"]: time.monotonic() for i in pacs.find_instances("SR")}


def run(studies: int, outage: float, root: Path) -> dict[str, float]:
    pacs = OrthancServer(root / "orthanc")
    destination = {"name": "pacs", "type": "dicom", "ae_title": pacs.aet, "host": "127.0.0.1"}
    destination["port"] = pacs.dicom_port
    with pacs, PredictdServer(root / "predictd", destinations=[destination], shipped_send=True) as server:
        pacs.stop()
        down = time.monotonic()
        uids = []
        for n in range(studies):
            src = copy_as_new_study(RG2_HIP_JLSL, root / f"study{n}.dcm")
            uids.append(str(pydicom.dcmread(src, stop_before_pixels=True).StudyInstanceUID))
            server.storescu(src)
        wait_until(lambda: all(server.study_state(u) == "reported" for u in uids), timeout=outage, interval=1.0)
        time.sleep(max(0.0, outage - (time.monotonic() - down)))  # the outage itself: nothing to poll for
        pacs.__enter__()
        back = time.monotonic()
        arrived: dict[str, float] = {}

        def all_arrived() -> bool:
            for uid, when in _srs_by_study(pacs).items():
                arrived.setdefault(uid, when)
            return set(uids) <= set(arrived)

        wait_until(all_arrived, timeout=600, interval=0.25, what="every SR in Orthanc")
        states = {u: server.study_state(u) for u in uids}
    print(f"states after: {sorted(set(states.values()))}")
    return {uid: arrived[uid] - back for uid in uids}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=5)
    parser.add_argument("--outage", type=float, default=120.0, help="seconds the PACS is down")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        delays = sorted(run(args.studies, args.outage, Path(tmp)).values())
    print(f"outage {args.outage:.0f} s, {args.studies} studies: SR delivered after the PACS returned, seconds:")
    print("  " + ", ".join(f"{d:.1f}" for d in delays) + f"  (max {max(delays):.1f})")


if __name__ == "__main__":
    main()
