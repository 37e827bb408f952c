"""Bilateral split of an AP pelvis and the laterality of single images, on synthetic datasets."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from predictd.models.preprocess import image_left_side, laterality_of, split_bilateral

ROWS, COLS = 4, 10


def _ramp() -> np.ndarray:
    """Dark at the image's left edge, bright at its right edge."""
    return np.tile(np.linspace(0.0, 1.0, COLS, dtype=np.float32), (ROWS, 1))


def _ds(**attrs: object) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def test_patient_orientation_l_puts_patient_right_on_image_left() -> None:
    ds = _ds(PatientOrientation=["L", "F"])
    assert image_left_side(ds) == "R"
    (side_a, half_a), (side_b, half_b) = split_bilateral(_ramp(), ds)
    assert (side_a, side_b) == ("R", "L")
    np.testing.assert_array_equal(half_a, _ramp()[:, :5])
    np.testing.assert_array_equal(half_b, _ramp()[:, 5:])
    assert half_a.max() < half_b.min()  # the dark content is the patient's right


def test_patient_orientation_r_flips_the_tags() -> None:
    ds = _ds(PatientOrientation=["R", "F"])
    assert image_left_side(ds) == "L"
    (side_a, half_a), (side_b, half_b) = split_bilateral(_ramp(), ds)
    assert (side_a, side_b) == ("L", "R")
    assert half_a.max() < half_b.min()  # still image-left first: content does not move, only the tags


def test_ap_without_patient_orientation_assumes_standard_display() -> None:
    ds = _ds(ViewPosition="AP")
    assert image_left_side(ds) == "R"
    assert [side for side, _ in split_bilateral(_ramp(), ds)] == ["R", "L"]


def test_patient_orientation_wins_over_view_position() -> None:
    assert image_left_side(_ds(PatientOrientation=["R", "F"], ViewPosition="AP")) == "L"


@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"ViewPosition": "PA"},  # flipped or not by the modality: cannot tell
        {"ViewPosition": "LL"},
        {"PatientOrientation": ["F", "L"]},  # rotated 90 degrees: the midline column does not separate the sides
        {"PatientOrientation": ["A", "F"]},  # lateral view
        {"PatientOrientation": ""},
    ],
    ids=["nothing", "pa", "lateral_view", "rotated", "lateral_orientation", "empty_orientation"],
)
def test_unknown_orientation_gives_unknown_laterality(attrs: dict[str, object]) -> None:
    ds = _ds(**attrs)
    assert image_left_side(ds) is None
    halves = split_bilateral(_ramp(), ds)
    assert [side for side, _ in halves] == [None, None]
    np.testing.assert_array_equal(halves[0][1], _ramp()[:, :5])  # the halves are still there, unlabelled


def test_compound_orientation_uses_the_most_significant_letter() -> None:
    assert image_left_side(_ds(PatientOrientation=["LA", "F"])) == "R"


def test_odd_width_drops_the_middle_column_and_halves_are_copies() -> None:
    img = np.arange(3 * 7, dtype=np.float32).reshape(3, 7)
    (_, left), (_, right) = split_bilateral(img, _ds(ViewPosition="AP"))
    np.testing.assert_array_equal(left, img[:, :3])
    np.testing.assert_array_equal(right, img[:, 4:])
    left[:] = -1
    assert img.min() == 0


@pytest.mark.parametrize("shape", [(5,), (4, 1), (2, 3, 4)])
def test_split_rejects_non_images(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="2-D image"):
        split_bilateral(np.zeros(shape, dtype=np.float32), _ds())


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"ImageLaterality": "R"}, "R"),
        ({"ImageLaterality": "L"}, "L"),
        ({"ImageLaterality": "B"}, None),
        ({"ImageLaterality": "U"}, None),
        ({"Laterality": "L"}, "L"),
        ({"ImageLaterality": "R", "Laterality": "L"}, "R"),
        ({"ImageLaterality": "B", "Laterality": "L"}, None),
        ({"ImageLaterality": "", "Laterality": "R"}, "R"),
        ({}, None),
    ],
)
def test_laterality_of(attrs: dict[str, object], expected: str | None) -> None:
    assert laterality_of(_ds(**attrs)) == expected
