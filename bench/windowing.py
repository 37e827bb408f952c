"""`to_gray` of windowed radiographs with predictd's linear window against pydicom's `apply_windowing` (the path
before), interleaved in rounds on the same datasets; min and median ms per image, and the largest difference.

    python -m bench.windowing --rounds 15      # RG2 from ../shared when present, and pydicom-data's RG1 and RG3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pydicom

import predictd.models.preprocess as preprocess
from tests.support import RG2_HIP_JLSL, pydicom_data_file


def _pydicom_path(ds: pydicom.Dataset) -> np.ndarray:
    fast, preprocess._linear_window = preprocess._linear_window, lambda values, ds: None
    try:
        return preprocess.to_gray(ds)
    finally:
        preprocess._linear_window = fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    paths = [p for p in (RG2_HIP_JLSL,) if p.exists()] + [pydicom_data_file(f"{n}_UNCR.dcm") for n in ("RG1", "RG3")]
    for path in paths:
        ds = pydicom.dcmread(path)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()  # time the windowing, not the codec
        times: dict[str, list[float]] = {"predictd": [], "pydicom": []}
        for _ in range(args.rounds):
            for name, call in (("predictd", preprocess.to_gray), ("pydicom", _pydicom_path)):
                start = time.perf_counter()
                call(ds)
                times[name].append(time.perf_counter() - start)
        difference = float(np.abs(preprocess.to_gray(ds) - _pydicom_path(ds)).max())
        cells = "   ".join(
            f"{k} min {min(v) * 1e3:5.1f} median {statistics.median(v) * 1e3:5.1f} ms" for k, v in times.items()
        )
        print(f"{path.name:24s} {ds.Rows}x{ds.Columns}  {cells}   max |difference| {difference:.1e}")


if __name__ == "__main__":
    main()
