"""Pixel decode speed of every pydicom decoding plugin, per transfer syntax, on one core.

    .venv/bin/python -m bench.decoders [--runs 7]

Both real sources (the CR hip, 2140x1760 10-bit JPEG-LS, and pydicom-data's RG1_UNCR, 1955x1841 15-bit) are
transcoded with ``tests.support.transcode`` into every syntax that takes their bit depth without rescaling. Each
plugin that pydicom 3 lists as available for the syntax decodes the already-read dataset (``dcmread`` is not timed);
the median of ``--runs`` runs is reported, in ms per image. Lossless syntaxes must give the source's pixels bit for
bit: a plugin that does not is marked and must not be preferred. Lossy syntaxes are compared with the source only for
information (dcmcjpeg's lossy modes rescale the stored values, so jpeg_extended differs a lot) and with pydicom's
default plugin, to show plugins that round differently. jpeg_baseline takes 8-bit sources only, and neither source is
8-bit, so it is not measured. imagecodecs has no pydicom 3.0 plugin, and HTJ2K no
encoder here (see ``tests/support/transcode.py``), so neither is measured.
"""

from __future__ import annotations

import os

# One core: set before numpy and the codec libraries are imported (OpenMP / BLAS / OpenJPEG threads).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from pydicom.pixels import get_decoder, pixel_array  # noqa: E402
from pydicom.uid import UID  # noqa: E402

from tests.support import RG2_HIP_JLSL, pydicom_data_file  # noqa: E402
from tests.support.transcode import LOSSLESS, SYNTAXES, accepts, transcode  # noqa: E402

NATIVE = "native"
"""Label for uncompressed syntaxes, which pydicom decodes without a plugin."""


@dataclass(frozen=True)
class Row:
    source: str
    syntax: str
    plugin: str
    median_ms: float
    min_ms: float
    max_abs_diff: int
    """Largest |pixel - source pixel|; must be 0 for a lossless syntax."""
    diff_vs_default: int
    """Largest |pixel - pixel of pydicom's default plugin|: lossy decoders may round differently."""

    @property
    def lossless(self) -> bool:
        return self.syntax in LOSSLESS

    @property
    def valid(self) -> bool:
        return not self.lossless or self.max_abs_diff == 0


def sources() -> dict[str, Path]:
    return {"rg2_hip": RG2_HIP_JLSL, "rg1_chest": pydicom_data_file("RG1_UNCR.dcm")}


def plugins_for(uid: str) -> tuple[tuple[str, ...], list[str]]:
    """(available plugin names, missing-plugin notes) of pydicom's decoder for ``uid``."""
    decoder = get_decoder(UID(uid))
    if not decoder.is_encapsulated:
        return (NATIVE,), []
    return tuple(decoder.available_plugins), list(decoder.missing_dependencies)


def _decode(ds: pydicom.Dataset, plugin: str) -> np.ndarray:
    return pixel_array(ds, decoding_plugin="" if plugin == NATIVE else plugin)


def time_plugin(ds: pydicom.Dataset, plugin: str, runs: int) -> tuple[float, float, np.ndarray]:
    """(median ms, min ms, last array) over ``runs`` decodes after one untimed warm-up."""
    arr = _decode(ds, plugin)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        arr = _decode(ds, plugin)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times), arr


def measure(runs: int, folder: Path) -> tuple[list[Row], dict[str, list[str]], dict[str, str]]:
    """Rows, missing-dependency notes per syntax, and the failures (``source/syntax/plugin`` → error)."""
    rows: list[Row] = []
    missing: dict[str, list[str]] = {}
    failures: dict[str, str] = {}
    for source, path in sources().items():
        reference = pydicom.dcmread(path).pixel_array
        bits = int(pydicom.dcmread(path, stop_before_pixels=True).BitsStored)
        for syntax, uid in SYNTAXES.items():
            if not accepts(bits, syntax):
                continue
            ds = pydicom.dcmread(transcode(path, syntax, folder / source / f"{syntax}.dcm"))
            available, missing[syntax] = plugins_for(uid)
            default = pixel_array(ds).astype(np.int64)
            for plugin in available:
                try:
                    median, fastest, arr = time_plugin(ds, plugin, runs)
                except Exception as exc:  # a plugin that lists itself available may still refuse this file
                    failures[f"{source}/{syntax}/{plugin}"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
                    continue
                if arr.shape != reference.shape:
                    failures[f"{source}/{syntax}/{plugin}"] = f"shape {arr.shape} != {reference.shape}"
                    continue
                diff = int(np.abs(arr.astype(np.int64) - reference.astype(np.int64)).max())
                diff_default = int(np.abs(arr.astype(np.int64) - default).max())
                rows.append(Row(source, syntax, plugin, median, fastest, diff, diff_default))
    return rows, missing, failures


def table(rows: list[Row]) -> str:
    """Markdown table, fastest valid plugin of each (source, syntax) in bold."""
    best: dict[tuple[str, str], float] = {}
    for r in rows:
        if r.valid:
            key = (r.source, r.syntax)
            best[key] = min(best.get(key, float("inf")), r.median_ms)
    lines = [
        "| source | syntax | plugin | median ms | min ms | max abs diff vs source | vs default plugin |",
        "|---|---|---|---:|---:|---|---:|",
    ]
    for r in rows:
        name = f"**{r.plugin}**" if r.valid and best[r.source, r.syntax] == r.median_ms else r.plugin
        diff = str(r.max_abs_diff) + (" (lossless: MISMATCH, excluded)" if not r.valid else "")
        lines.append(
            f"| {r.source} | {r.syntax} | {name} | {r.median_ms:.1f} | {r.min_ms:.1f} | {diff} | {r.diff_vs_default} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="timed decodes per plugin (median reported)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    versions = []
    for module in ("pydicom", "pylibjpeg", "openjpeg", "libjpeg", "rle", "jpeg_ls", "gdcm", "PIL"):
        try:
            mod = __import__(module)
        except ImportError:
            versions.append(f"{module} (not installed)")
            continue
        version = getattr(mod, "__version__", None) or getattr(mod, "Version", None)
        if callable(version):  # gdcm.Version is a class with GetVersion()
            version = getattr(version, "GetVersion", lambda: "?")()
        versions.append(f"{module} {version}")
    with tempfile.TemporaryDirectory() as tmp:
        rows, missing, failures = measure(args.runs, Path(tmp))
    print(f"median of {args.runs} decodes, ms per image, one core; {', '.join(versions)}\n")
    print(table(rows))
    notes = {syntax: m for syntax, m in missing.items() if m}
    if notes:
        print("\nplugins not available here:")
        for syntax, m in notes.items():
            print(f"  {syntax}: {'; '.join(' '.join(x.split()) for x in m)}")
    if failures:
        print("\nfailed:")
        for key, err in failures.items():
            print(f"  {key}: {err}")


if __name__ == "__main__":
    main()
