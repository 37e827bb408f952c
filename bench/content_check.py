"""The figures behind models.content_check: spread, smoothness and sharpness of every image of the shipped models'
manifests (all splits), of the real CRs, and of every out-of-domain probe, with how many each threshold refuses.

    python -m bench.content_check            # needs ../shared beside the checkout (and pydicom-data)
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from predictd.models import data, probes
from predictd.models.content_check import content_stats
from predictd.models.install import shipped

SHARED_DICOM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    groups: dict[str, list[tuple[str, np.ndarray]]] = defaultdict(list)
    for name, folder in sorted(shipped().items()):
        for record in data.read_manifest(folder / "manifest.csv"):
            groups[f"manifest {name}"].append((record.path.name, data.load_gray(record.path)))
    for probe in probes.default_probes() + probes.dicom_folder(SHARED_DICOM):
        groups[probe.category].append((probe.name, probe.gray))
    print(f"{'group':40s} {'n':>4s}  {'spread min':>10s} {'smooth min':>10s} {'sharp min':>9s}  refused")
    for group, images in groups.items():
        stats = [content_stats(gray) for _, gray in images]
        refused = sum(s.problem is not None for s in stats)
        print(
            f"{group:40s} {len(images):4d}  {min(s.spread for s in stats):10.3f} "
            f"{min(s.smoothness for s in stats):10.3f} {min(s.sharpness for s in stats):9.3f}  {refused}"
        )


if __name__ == "__main__":
    main()
