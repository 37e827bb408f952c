"""models.data: manifests from folder trees, CSVs and DICOM dirs; near-duplicate groups; patient-level split."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from predictd.models.card import Preprocessing
from predictd.models.data import (
    DataError,
    Record,
    from_csv,
    from_dicom_dir,
    from_folder_tree,
    load_image,
    near_duplicate_groups,
    read_manifest,
    split,
    write_manifest,
)
from tests.support import CR_JLSL, SHARED_DATA

README_COUNTS = {
    "shoulder_implant_uci": {"Cofield": 62, "Depuy": 220, "Tornier": 53, "Zimmer": 112},
    "hip_tha_radiologyai": {"no_THA": 49, "yes_THA": 44, "yes_HRA": 22},
}


def _texture(seed: int, size: int = 64) -> np.ndarray:
    """Blobby uint8 image in [20, 200]: distinct seeds give distinct hashes, no clipping when brightened a little."""
    coarse = np.random.default_rng(seed).uniform(20, 200, (8, 8)).astype(np.float32)
    big = Image.fromarray(coarse, mode="F").resize((size, size), resample=Image.Resampling.BICUBIC)
    return np.clip(np.asarray(big), 20, 200).astype(np.uint8)


def _png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").save(path)
    return path


def _dicom(path: Path, patient_id: str) -> Path:
    ds = pydicom.dcmread(CR_JLSL)
    ds.PatientID = patient_id
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return path


def _records(n_groups: int, labels: tuple[str, ...] = ("a", "b", "c"), per_group: int = 1) -> list[Record]:
    return [
        Record(path=Path(f"/x/{g}_{i}.png"), label=labels[g % len(labels)], group=f"g{g:03d}")
        for g in range(n_groups)
        for i in range(per_group)
    ]


# ---------------------------------------------------------------- sources


def test_folder_tree_labels_and_groups(tmp_path: Path) -> None:
    _png(tmp_path / "hip" / "one.png", _texture(1))
    _png(tmp_path / "hip" / "sub" / "two.jpg", _texture(2))  # any depth below the label folder
    _dicom(tmp_path / "knee" / "a.dcm", "P1")
    _dicom(tmp_path / "knee" / "b.dcm", "P1")
    _dicom(tmp_path / "knee" / "c", "")  # extension-less DICOM without PatientID: the stem
    (tmp_path / "knee" / "notes.txt").write_text("not an image")

    records = from_folder_tree(tmp_path)
    got = {r.path.relative_to(tmp_path).as_posix(): (r.label, r.group) for r in records}
    assert got == {
        "hip/one.png": ("hip", "one"),
        "hip/sub/two.jpg": ("hip", "two"),
        "knee/a.dcm": ("knee", "P1"),
        "knee/b.dcm": ("knee", "P1"),
        "knee/c": ("knee", "c"),
    }
    assert all(r.split == "" and r.readers == {} for r in records)
    assert [r.path.name for r in from_dicom_dir(tmp_path)] == ["a.dcm", "b.dcm", "c"]


def test_folder_tree_takes_groups_from_the_sets_labels_csv(tmp_path: Path) -> None:
    _png(tmp_path / "x" / "one.png", _texture(1))
    _png(tmp_path / "x" / "two.png", _texture(2))
    _png(tmp_path / "y" / "three.png", _texture(3))
    (tmp_path / "labels.csv").write_text("path,label,group\nx/one.png,x,G1\ny/three.png,y,G1\n")
    assert {r.path.name: r.group for r in from_folder_tree(tmp_path)} == {
        "one.png": "G1",
        "two.png": "two",
        "three.png": "G1",
    }


def test_empty_tree_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "label").mkdir()
    with pytest.raises(DataError, match="no images"):
        from_folder_tree(tmp_path)


def test_csv_readers_relative_paths_and_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "in" / "list.csv"
    src.parent.mkdir()
    elsewhere = tmp_path / "elsewhere.png"
    src.write_text(
        "image,dx,patient,reader_1,reader_2,comment\n"
        f"img/a.png,yes,P1,yes,no,x\nimg/b.png,no,,no,no,y\n{elsewhere},no,P2,,yes,z\n"
    )
    records = from_csv(src, path_col="image", label_col="dx", group_col="patient")
    assert [r.path for r in records] == [src.parent / "img/a.png", src.parent / "img/b.png", elsewhere]
    assert [r.group for r in records] == ["P1", "b", "P2"]  # empty group: the stem
    assert records[0].readers == {"reader_1": "yes", "reader_2": "no"}  # "comment" is not a reader column

    records = split(records, seed=3)
    manifest = tmp_path / "in" / "manifest.csv"
    write_manifest(records, manifest)
    with manifest.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["path", "label", "group", "split", "reader_1", "reader_2"]
    assert rows[1][0] == "img/a.png"  # under the manifest's folder: relative, so it moves with the images
    assert rows[3][0] == str(elsewhere)
    assert read_manifest(manifest) == records


def test_csv_without_label_column_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "list.csv"
    src.write_text("path,group\na.png,1\n")
    with pytest.raises(DataError, match="label"):
        from_csv(src)


# ---------------------------------------------------------------- images


def test_load_image_png_and_dicom_as_inference_input(tmp_path: Path) -> None:
    prep = Preprocessing(input_size=32, in_chans=3)
    png = _png(tmp_path / "a.png", _texture(1, size=40))
    for path in (png, CR_JLSL):
        x = load_image(path, prep)
        assert x.shape == (3, 32, 32) and x.dtype == np.float32
        assert np.isfinite(x).all() and x.std() > 0
    rgb = tmp_path / "rgb.jpg"
    Image.fromarray(np.stack([_texture(2)] * 3, axis=-1), mode="RGB").save(rgb)
    assert load_image(rgb, Preprocessing(input_size=16)).shape == (1, 16, 16)


# ---------------------------------------------------------------- near-duplicates


def test_brightened_copy_joins_its_original_group_and_split(tmp_path: Path) -> None:
    original = _texture(7)
    brighter = np.clip(original.astype(np.int16) + 30, 0, 255).astype(np.uint8)
    _png(tmp_path / "a" / "orig.png", original)
    _png(tmp_path / "a" / "copy_bright.png", brighter)
    for i in range(12):
        _png(tmp_path / ("a" if i % 2 else "b") / f"other{i}.png", _texture(100 + i))

    records = from_folder_tree(tmp_path)
    assert len({r.group for r in records}) == 14
    merged = near_duplicate_groups(records)
    assert len({r.group for r in merged}) == 13
    by_name = {r.path.name: r for r in split(merged, seed=1)}
    assert by_name["orig.png"].group == by_name["copy_bright.png"].group == "copy_bright"  # smallest id wins
    assert by_name["orig.png"].split == by_name["copy_bright.png"].split
    assert near_duplicate_groups([]) == []


# ---------------------------------------------------------------- split


def _check_split(records: list[Record], fractions: tuple[float, float, float], tolerance: float) -> None:
    splits_of_group: dict[str, set[str]] = {}
    for r in records:
        splits_of_group.setdefault(r.group, set()).add(r.split)
    assert all(len(s) == 1 for s in splits_of_group.values()), "a group straddles splits"
    counts = Counter(r.split for r in records)
    for name, fraction in zip(("train", "val", "test"), fractions, strict=True):
        assert abs(counts[name] / len(records) - fraction) <= tolerance, (name, counts)
    assert {r.label for r in records if r.split == "train"} == {r.label for r in records}


def test_split_is_grouped_stratified_and_deterministic() -> None:
    records = _records(60, per_group=2) + _records(5, labels=("rare",))
    result = split(records, seed=0)
    _check_split(result, (0.7, 0.1, 0.2), tolerance=0.03)
    assert split(records, seed=0) == result
    assert split(list(reversed(records)), seed=0) == list(reversed(result))  # order of the input does not matter
    assert split(records, seed=1) != result
    for label in ("a", "b", "c"):
        stratum = Counter(r.split for r in result if r.label == label)
        assert stratum["train"] == 28 and stratum["val"] == 4 and stratum["test"] == 8


def test_split_fractions_are_configurable() -> None:
    result = split(_records(100), fractions=(0.5, 0.0, 0.5), seed=2)
    counts = Counter(r.split for r in result)
    assert set(counts) == {"train", "test"} and abs(counts["train"] - 50) <= 2  # rounding per stratum


def test_every_split_gets_a_group_when_there_are_enough() -> None:
    result = split(_records(3, labels=("only",)), seed=0)
    assert sorted(r.split for r in result) == ["test", "train", "val"]
    assert [r.split for r in split(_records(1), seed=0)] == ["train"]


def test_group_with_mixed_labels_is_stratified_by_its_majority() -> None:
    mixed = [Record(Path(f"/m/{i}.png"), "b" if i else "a", "mixed") for i in range(3)]
    result = split(mixed + _records(20, labels=("a",)), seed=0)
    assert len({r.split for r in result if r.group == "mixed"}) == 1


@pytest.mark.parametrize("fractions", [(0.7, 0.3), (0.7, -0.1, 0.4), (0.0, 0.0, 0.0)])
def test_bad_fractions_are_rejected(fractions: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="fractions"):
        split(_records(3), fractions=fractions)


# ---------------------------------------------------------------- the real sets


@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(README_COUNTS))
def test_real_sets_load_and_split(name: str) -> None:
    root = SHARED_DATA / name
    tree = from_folder_tree(root)
    listed = from_csv(root / "labels.csv")
    assert dict(Counter(r.label for r in listed)) == README_COUNTS[name]
    assert {r.path for r in tree} == {r.path for r in listed}
    assert {r.path: r.group for r in tree} == {r.path: r.group for r in listed}  # groups from the set's metadata
    # label = folder name; the set's labels.csv disagrees with its folder for one hip image
    disagree = {r.path.relative_to(root).as_posix() for r in tree} - {
        r.path.relative_to(root).as_posix() for r in listed if r.path.parent.name == r.label
    }
    assert disagree == ({"yes_THA/5b3a6898_690a0225df2152f76db851a23cd4d3_jumbo.jpg"} if "hip" in name else set())

    records = split(near_duplicate_groups(tree), seed=0)
    assert split(records, seed=0) == records
    _check_split(records, (0.7, 0.1, 0.2), tolerance=0.03)
    disputed = {r.split for r in records if r.group == "39fb8861"}  # one near-duplicate pair, two labels
    assert len(disputed) <= 1
