"""models.preprocess.content_box / crop_to_content on synthetic borders, and the crop in the model input."""

from __future__ import annotations

import numpy as np
import pytest

from predictd.models.card import Preprocessing
from predictd.models.preprocess import content_box, crop_to_content, gray_to_input, to_gray
from tests.support import pydicom_data_file


def _anatomy(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Textured 'anatomy': smooth structure plus noise, nowhere flat."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    base = 0.5 + 0.3 * np.sin(x / 17.0) * np.cos(y / 23.0)
    return np.clip(base + rng.normal(0, 0.05, (rows, cols)), 0.0, 1.0).astype(np.float32)


def _framed(content: np.ndarray, top: int, bottom: int, left: int, right: int, value: float) -> np.ndarray:
    out = np.full((content.shape[0] + top + bottom, content.shape[1] + left + right), value, dtype=np.float32)
    out[top : top + content.shape[0], left : left + content.shape[1]] = content
    return out


def _assert_box_near(box: tuple[slice, slice], expected: tuple[int, int, int, int], slack: int) -> None:
    rows, cols = box
    got = (rows.start, rows.stop, cols.start, cols.stop)
    assert all(abs(g - e) <= slack for g, e in zip(got, expected, strict=True)), (got, expected)


@pytest.mark.parametrize("value", [0.0, 1.0, 0.37], ids=["black", "white", "gray"])
def test_letterbox_and_pillarbox_bars_are_removed(value: float) -> None:
    content = _anatomy(300, 200)
    framed = _framed(content, 40, 60, 150, 10, value)
    _assert_box_near(content_box(framed), (40, 340, 150, 350), slack=1)


def test_large_image_edges_are_found_to_within_a_block() -> None:
    content = _anatomy(2000, 1400)
    framed = _framed(content, 0, 0, 700, 700, 0.0)  # a portrait CR padded to a square
    rows, cols = content_box(framed)
    block = -(-framed.shape[1] // 512)
    assert rows == slice(0, 2000)
    assert abs(cols.start - 700) <= block and abs(cols.stop - 2100) <= block


def test_a_small_letter_in_a_bar_does_not_stop_the_crop() -> None:
    framed = _framed(_anatomy(400, 400), 0, 0, 100, 100, 0.0)
    framed[20:28, 30:36] = 1.0  # an "L" marker burnt into the left bar: 8 of 400 rows
    _assert_box_near(content_box(framed), (0, 400, 100, 500), slack=1)


def test_flat_lines_inside_the_image_are_kept() -> None:
    content = _anatomy(200, 200)
    content[:, 90:110] = 0.0  # a flat vertical band in the middle of the anatomy
    assert content_box(content) == (slice(0, 200), slice(0, 200))


def test_blank_image_is_returned_whole() -> None:
    blank = np.zeros((120, 80), dtype=np.float32)
    assert crop_to_content(blank).shape == (120, 80)


def test_jpeg_ringing_in_a_bar_is_still_a_bar() -> None:
    rng = np.random.default_rng(1)
    framed = _framed(_anatomy(256, 256), 64, 64, 0, 0, 0.0)
    framed[:64] += rng.uniform(0, 0.02, (64, 256)).astype(np.float32)  # compression noise in the top bar
    _assert_box_near(content_box(framed), (64, 320, 0, 256), slack=1)


def test_padded_and_tight_copies_reach_the_model_alike() -> None:
    """A portrait radiograph padded to a square (either polarity) and the same image cropped tight give one input."""
    prep = Preprocessing(input_size=64, crop_content=True)
    content = _anatomy(400, 250)
    tight = gray_to_input(content, prep)
    for value in (0.0, 1.0):
        padded = gray_to_input(_framed(content, 0, 0, 75, 75, value), prep)
        assert np.abs(padded - tight).mean() < 0.02


def test_cards_without_crop_read_the_frame() -> None:
    """Cards trained before the crop existed keep their input: the padding stays in."""
    prep = Preprocessing(input_size=64)
    content = _anatomy(400, 250)
    assert np.abs(gray_to_input(_framed(content, 0, 0, 75, 75, 1.0), prep) - gray_to_input(content, prep)).mean() > 0.1


def test_pixel_padding_value_is_cropped_on_a_real_cr() -> None:
    """RG3 (MONOCHROME1) with its PixelPaddingValue: the padding becomes black after to_gray, then is cropped."""
    import pydicom

    ds = pydicom.dcmread(pydicom_data_file("RG3_UNCR.dcm"))
    gray = to_gray(ds)
    rows, cols = content_box(gray)
    cropped = gray[rows, cols]
    assert cropped.size <= gray.size
    for edge in (cropped[0], cropped[-1], cropped[:, 0], cropped[:, -1]):
        low, high = np.percentile(edge, [2, 98])
        assert high - low > 0.04 or cropped.shape == gray.shape


def test_a_frame_inside_a_frame_is_removed_too() -> None:
    """A landscape image with black side strips, padded to a square in white: the columns of the black strips are not
    flat until the white rows above and below them are gone, so one pass is not enough."""
    strips = _framed(_anatomy(300, 400), 0, 0, 30, 30, 0.0)  # 300 x 460
    square = _framed(strips, 80, 80, 0, 0, 1.0)  # 460 x 460
    _assert_box_near(content_box(square), (80, 380, 30, 430), slack=1)


def test_edges_are_found_to_the_pixel_on_a_large_image() -> None:
    """The analysis runs on blocks (3 px here); the edges are then found at full resolution: a bar left one block
    wide would be a black line beside the model's gray padding."""
    framed = _framed(_anatomy(1100, 700), 101, 52, 0, 0, 0.0)  # 1253 x 700: blocks of 3 px
    rows, cols = content_box(framed)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (101, 1201, 0, 700)
