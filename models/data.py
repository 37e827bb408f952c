"""Labelled image sets → a manifest (path, label, group, split, reader columns) and the images as network input.

Sources: a folder tree (label = the folder right under the root), a CSV, or a DICOM directory. The *group* is the
unit that never straddles two splits: the patient (DICOM PatientID), else a group id the data set itself provides
(a ``labels.csv`` next to the label folders with ``path`` and ``group`` columns, as in ../shared/data), else the
file stem. :func:`near_duplicate_groups` then merges groups whose images look alike (perceptual hash), and
:func:`split` assigns whole groups to train/val/test, stratified by each group's majority label.

PNG and JPEG go through the same resize/pad/normalise as DICOM at inference (:func:`models.preprocess.gray_to_input`),
so a model trained on a manifest is fed at inference the way it was trained.
"""

from __future__ import annotations

import csv
import hashlib
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from predictd.models.card import Preprocessing, file_sha256
from predictd.models.preprocess import gray_to_input, to_gray

SPLITS = ("train", "val", "test")
"""Split names, in the order of the ``fractions`` given to :func:`split`."""
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
"""70/10/20, as in the hip-hardware paper."""
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
RASTER_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
METADATA_CSV = "labels.csv"
"""A CSV at the root of a folder tree whose ``path`` (relative to the root) and ``group`` columns name the groups."""
READER_PREFIX = "reader"
MANIFEST_COLUMNS = ("path", "label", "group", "split")
HASH_SIDE = 16
"""Difference hash: 16 rows × 16 left/right comparisons = 256 bits. 8×8 is too coarse for radiographs of one
body part: on shoulder_implant_uci distinct images often share an identical 64-bit hash."""
DEFAULT_HAMMING = 10
"""Hashes at most this many bits (of 256) apart are near-duplicates. On hip_tha_radiologyai the labelled
near-duplicates are ≤ 5 bits apart and distinct images ≥ 35."""


class DataError(ValueError):
    """A source that cannot become a manifest: missing columns, unknown image type, empty tree."""


@dataclass(frozen=True)
class Record:
    """One labelled image. ``readers`` holds extra per-reader labels (CSV columns starting with "reader")."""

    path: Path
    label: str
    group: str
    split: str = ""
    readers: dict[str, str] = field(default_factory=dict, hash=False)


# ---------------------------------------------------------------- sources


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:  # extension-less files (as PACS exports write them): the DICM magic after the 128-byte preamble
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _is_image(path: Path) -> bool:
    return path.is_file() and (path.suffix.lower() in RASTER_SUFFIXES or _is_dicom(path))


def _patient_id(path: Path) -> str:
    """PatientID from the header only (pixels not read); empty when absent."""
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    return str(ds.get("PatientID", "") or "").strip()


def _metadata_groups(root: Path) -> dict[str, str]:
    """``labels.csv`` at the root: relative posix path → group id; empty when there is none or it has no groups."""
    meta = root / METADATA_CSV
    if not meta.is_file():
        return {}
    with meta.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"path", "group"} <= set(reader.fieldnames or ()):
            return {}
        return {row["path"]: row["group"] for row in reader if row.get("group")}


def _tree(root: Path, *, dicom_only: bool) -> list[Record]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory")
    groups = _metadata_groups(root)
    records = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(p for p in label_dir.rglob("*") if _is_image(p)):
            dicom = _is_dicom(path)
            if dicom_only and not dicom:
                continue
            group = (_patient_id(path) if dicom else "") or groups.get(path.relative_to(root).as_posix(), "")
            records.append(Record(path=path, label=label_dir.name, group=group or path.stem))
    if not records:
        raise DataError(f"no images under {root}/<label>/")
    return records


def from_folder_tree(root: Path) -> list[Record]:
    """Every DICOM/PNG/JPEG under ``root/<label>/`` (any depth below the label folder), sorted by path.

    label: the folder right under ``root``. group: the DICOM PatientID; for other files (or DICOM without one)
    the ``group`` of the file's row in ``root/labels.csv`` when that CSV exists; else the file stem.
    """
    return _tree(root, dicom_only=False)


def from_dicom_dir(root: Path) -> list[Record]:
    """Only the DICOM files of a folder tree (label = folder under ``root``, group = PatientID, headers only read)."""
    return _tree(root, dicom_only=True)


def from_csv(path: Path, *, path_col: str = "path", label_col: str = "label", group_col: str = "group") -> list[Record]:
    """One record per row. Relative paths are resolved against the CSV's folder; a missing or empty group is the
    file stem; a ``split`` column is kept; other columns starting with "reader" become ``readers``."""
    path = Path(path)
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or ())
        missing = [c for c in (path_col, label_col) if c not in columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; has {columns}")
        reader_cols = [c for c in columns if c.startswith(READER_PREFIX) and c not in (path_col, label_col, group_col)]
        records = []
        for line, row in enumerate(reader, start=2):
            if not row.get(path_col) or not row.get(label_col):
                raise DataError(f"{path}:{line}: empty {path_col!r} or {label_col!r}")
            image = Path(row[path_col])
            if not image.is_absolute():
                image = path.parent / image
            records.append(
                Record(
                    path=image,
                    label=row[label_col],
                    group=(row.get(group_col) or "").strip() or image.stem,
                    split=(row.get("split") or "").strip(),
                    readers={c: row[c] or "" for c in reader_cols},
                )
            )
    return records


def write_manifest(records: Iterable[Record], path: Path) -> None:
    """CSV with path,label,group,split and the reader columns (union, sorted). Paths under the manifest's folder
    are written relative to it, others absolute, so a manifest moves with its images."""
    path = Path(path)
    rows = list(records)
    readers = sorted({k for r in rows for k in r.readers})
    base = path.parent.resolve()
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*MANIFEST_COLUMNS, *readers])
        for r in rows:
            image = r.path.resolve()
            shown = image.relative_to(base).as_posix() if image.is_relative_to(base) else str(image)
            writer.writerow([shown, r.label, r.group, r.split, *(r.readers.get(k, "") for k in readers)])


def manifest_sha256(records: Iterable[Record], root: Path | None = None) -> str:
    """A fingerprint of the data a model saw: every image's bytes with its label and split, in path order.

    Paths enter relative to ``root`` (when given) so the same images hash alike wherever they are mounted.
    """
    digest = hashlib.sha256()
    for r in sorted(records, key=lambda rec: rec.path.as_posix()):
        image = r.path.resolve()
        shown = (
            image.relative_to(root.resolve()).as_posix()
            if root and image.is_relative_to(root.resolve())
            else image.name
        )
        digest.update(f"{shown}\t{r.label}\t{r.split}\t{file_sha256(r.path)}\n".encode())
    return digest.hexdigest()


def read_manifest(path: Path) -> list[Record]:
    """The records :func:`write_manifest` wrote (paths resolved against the manifest's folder)."""
    return from_csv(path)


# ---------------------------------------------------------------- images


def load_gray(path: Path, window: str = "first") -> np.ndarray:
    """Float32 2-D in [0, 1]: DICOM through :func:`models.preprocess.to_gray`; PNG/JPEG as 8/16-bit luminance."""
    path = Path(path)
    if _is_dicom(path):
        return to_gray(pydicom.dcmread(path), window)
    with Image.open(path) as img:
        if img.mode in ("I", "I;16", "I;16B", "I;16L"):
            arr = np.asarray(img, dtype=np.float32)
            return np.clip(arr / 65535.0, 0.0, 1.0).astype(np.float32)
        return (np.asarray(img.convert("L"), dtype=np.float32) / 255.0).astype(np.float32)


def load_image(path: Path, prep: Preprocessing) -> np.ndarray:
    """Float32 (in_chans, size, size) network input, with the card's preprocessing (same as inference)."""
    return gray_to_input(load_gray(path, prep.window), prep)


def load_images(records: Sequence[Record], prep: Preprocessing) -> np.ndarray:
    """Float32 (n, in_chans, size, size): every record's image through :func:`load_image`."""
    return np.stack([load_image(r.path, prep) for r in records])


# ---------------------------------------------------------------- near-duplicates


def dhash(gray: np.ndarray, side: int = HASH_SIDE) -> np.ndarray:
    """Difference hash: box-downsample to side × (side+1), one bit per left<right neighbour comparison.

    Returns the side² bits as a bool array. Comparisons survive brightness/contrast changes and re-encoding;
    the hash changes when the content does.
    """
    small = Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32), mode="F").resize(
        (side + 1, side), resample=Image.Resampling.BOX
    )
    arr = np.asarray(small, dtype=np.float32)
    return np.asarray((arr[:, 1:] > arr[:, :-1]).ravel())


def near_duplicate_groups(
    records: Sequence[Record], threshold: int = DEFAULT_HAMMING, window: str = "first"
) -> list[Record]:
    """Records with groups merged where images are near-identical (dHash Hamming distance ≤ ``threshold``).

    Union-find over existing groups: a merged group takes the smallest of its members' group ids, so the result is
    deterministic. Records keep their order. Every image is decoded once (O(n²) hash comparisons after that).
    """
    if not records:
        return []
    hashes = np.packbits(np.array([dhash(load_gray(r.path, window)) for r in records]), axis=1)
    parent: dict[str, str] = {r.group: r.group for r in records}

    def find(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for i in range(len(records) - 1):
        distances = np.unpackbits(hashes[i + 1 :] ^ hashes[i], axis=1).sum(axis=1)
        close = np.nonzero(distances <= threshold)[0]
        for j in close:
            union(records[i].group, records[i + 1 + int(j)].group)
    return [r if find(r.group) == r.group else replace(r, group=find(r.group)) for r in records]


# ---------------------------------------------------------------- split


def _majority(labels: list[str]) -> str:
    """Most frequent label; ties go to the alphabetically first, so the stratum does not depend on order."""
    counts = Counter(labels)
    best = max(counts.values())
    return min(label for label, n in counts.items() if n == best)


def split(
    records: Sequence[Record],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    names: Sequence[str] = SPLITS,
) -> list[Record]:
    """Records with ``split`` set; whole groups go to one split, stratified by each group's majority label.

    Within each stratum the groups are shuffled (seeded) and, largest first, given to the split furthest below its
    share of the stratum's images. Then each split with a positive fraction that ended up empty takes one group
    from the split most above its target, when there are enough groups (never the last train group of a label).
    Deterministic for a given seed and set of records, whatever their order.
    """
    if len(fractions) != len(names) or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions {tuple(fractions)} must be non-negative, one per split {tuple(names)}")
    total = float(sum(fractions))
    shares = [f / total for f in fractions]
    members: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        members[r.group].append(r)
    strata: dict[str, list[str]] = defaultdict(list)
    for group in sorted(members):
        strata[_majority([r.label for r in members[group]])].append(group)

    rng = random.Random(seed)
    assigned: dict[str, int] = {}
    for label in sorted(strata):
        groups = strata[label]
        rng.shuffle(groups)
        groups.sort(key=lambda g: -len(members[g]))  # stable: big groups first, equal sizes in shuffled order
        n_images = sum(len(members[g]) for g in groups)
        filled = [0] * len(names)
        for g in groups:
            k = max(range(len(names)), key=lambda i: (n_images * shares[i] - filled[i], shares[i]))
            assigned[g] = k
            filled[k] += len(members[g])

    _fill_empty_splits(assigned, members, strata, shares, len(records))
    return [replace(r, split=names[assigned[r.group]]) for r in records]


def _fill_empty_splits(
    assigned: dict[str, int],
    members: dict[str, list[Record]],
    strata: dict[str, list[str]],
    shares: list[float],
    n_images: int,
) -> None:
    label_of = {g: label for label, groups in strata.items() for g in groups}
    for k, share in enumerate(shares):
        if share <= 0 or k in assigned.values():
            continue
        sizes = [sum(len(members[g]) for g, s in assigned.items() if s == i) for i in range(len(shares))]
        surplus = sorted(
            (i for i in range(len(shares)) if i != k), key=lambda i: (-(sizes[i] - n_images * shares[i]), i)
        )
        for source in surplus:
            candidates = [g for g, s in assigned.items() if s == source]
            if len(candidates) < 2:
                continue
            if source == 0:  # keep every label in train
                in_train = Counter(label_of[g] for g in candidates)
                candidates = [g for g in candidates if in_train[label_of[g]] > 1]
            if candidates:
                moved = min(candidates, key=lambda g: (len(members[g]), g))
                assigned[moved] = k
                break
