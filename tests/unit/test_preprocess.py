"""models.preprocess on real radiographs: decode, VOI, MONOCHROME1, resize/pad, and decode failures."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGLSLossless

from predictd.models.card import Preprocessing
from predictd.models.preprocess import PixelDecodeError, preprocess, resize_pad, to_gray
from tests.support import CR_JLSL, pydicom_data_file


def _read(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path)


@pytest.fixture(scope="module")
def hip() -> pydicom.Dataset:
    return _read(CR_JLSL)


@pytest.fixture(scope="module")
def rg3() -> pydicom.Dataset:
    """Extremity CR, MONOCHROME1, uncompressed, with a window."""
    return _read(pydicom_data_file("RG3_UNCR.dcm"))


@pytest.mark.parametrize("window", ["first", "minmax"])
@pytest.mark.parametrize(
    "path",
    [CR_JLSL, pydicom_data_file("RG1_UNCR.dcm"), pydicom_data_file("RG3_UNCR.dcm")],
    ids=["hip_jpegls", "rg1_chest", "rg3_extremity"],
)
def test_to_gray_range_shape_dtype(path: Path, window: str) -> None:
    ds = _read(path)
    gray = to_gray(ds, window)
    assert gray.dtype == np.float32
    assert gray.shape == (ds.Rows, ds.Columns)
    assert 0.0 <= gray.min() < gray.max() <= 1.0
    assert gray.std() > 0.05  # real contrast, not a flat image


def test_unknown_window_rejected(hip: pydicom.Dataset) -> None:
    with pytest.raises(ValueError, match="window"):
        to_gray(hip, "brightest")


def test_monochrome1_is_inverted(rg3: pydicom.Dataset) -> None:
    as_mono2 = copy.deepcopy(rg3)
    as_mono2.PhotometricInterpretation = "MONOCHROME2"
    for window in ("first", "minmax"):
        mono1, mono2 = to_gray(rg3, window), to_gray(as_mono2, window)
        np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_monochrome1_bone_is_bright(rg3: pydicom.Dataset) -> None:
    """RG3 is a lower leg: the tibial shaft is bone, the strip just left of the leg is unattenuated exposure.

    Not inverted, the raw MONOCHROME1 values would show the bone dark and the direct exposure bright.
    """
    gray = resize_pad(to_gray(rg3), 384)
    tibia = gray[150:250, 180:200].mean()
    direct_exposure = gray[150:250, 110:140].mean()
    assert tibia > 0.5
    assert direct_exposure < 0.2


def test_monochrome2_bone_is_bright(hip: pydicom.Dataset) -> None:
    """The CR is MONOCHROME2, not inverted: the tibia is brighter than the air beside the leg."""
    gray = resize_pad(to_gray(hip), 384)
    tibia = gray[64:192, 176:208].mean()
    air = gray[64:256, 112:128].mean()
    assert tibia > air + 0.3


def test_uncompressed_and_j2k_lossless_decode_identically() -> None:
    unc = to_gray(_read(pydicom_data_file("RG1_UNCR.dcm")))
    j2k = to_gray(_read(pydicom_data_file("RG1_J2KR.dcm")))
    np.testing.assert_array_equal(unc, j2k)


def test_first_window_differs_from_minmax(hip: pydicom.Dataset) -> None:
    assert "WindowCenter" in hip
    assert not np.allclose(to_gray(hip, "first"), to_gray(hip, "minmax"))


def test_first_window_without_window_falls_back_to_minmax(hip: pydicom.Dataset) -> None:
    bare = copy.deepcopy(hip)
    del bare.WindowCenter
    del bare.WindowWidth
    np.testing.assert_array_equal(to_gray(bare, "first"), to_gray(hip, "minmax"))


def test_pixel_padding_is_black_and_ignored(rg3: pydicom.Dataset) -> None:
    padded = copy.deepcopy(rg3)
    raw = padded.pixel_array
    padded.PixelPaddingValue = int(raw.max())
    gray = to_gray(padded, "minmax")
    assert np.all(gray[raw == raw.max()] == 0.0)
    assert gray.max() == pytest.approx(1.0)


def test_resize_pad_keeps_aspect_and_centres() -> None:
    ramp = np.tile(np.linspace(0.1, 1.0, 100, dtype=np.float32), (50, 1))  # 50 rows x 100 columns
    out = resize_pad(ramp, 64)
    assert out.shape == (64, 64)
    assert out.dtype == np.float32
    rows = np.flatnonzero(out.max(axis=1) > 0)
    assert (rows[0], rows[-1] + 1) == (16, 48)  # half the height, centred
    assert np.all(out[:16] == 0) and np.all(out[48:] == 0)
    assert np.all(out[16:48] > 0)  # content spans the full width
    assert out[32, 0] < out[32, 32] < out[32, 63]  # the ramp survives resizing


def test_resize_pad_tall_image() -> None:
    out = resize_pad(np.ones((100, 25), dtype=np.float32), 40)
    cols = np.flatnonzero(out.max(axis=0) > 0)
    assert (cols[0], cols[-1] + 1) == (15, 25)


def test_preprocess_shape_and_normalisation(hip: pydicom.Dataset) -> None:
    prep = Preprocessing(input_size=96, in_chans=3, mean=0.5, std=0.25)
    x = preprocess(hip, prep)
    assert x.shape == (3, 96, 96)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x[0], x[2])
    expected = (resize_pad(to_gray(hip), 96) - 0.5) / 0.25
    np.testing.assert_allclose(x[1], expected, rtol=1e-6)
    assert x[0, 0, 0] == pytest.approx(-2.0)  # the zero padding, normalised


def test_no_pixel_data(hip: pydicom.Dataset) -> None:
    bare = copy.deepcopy(hip)
    del bare.PixelData
    with pytest.raises(PixelDecodeError, match="no pixel data"):
        to_gray(bare)


def test_garbage_jpegls_names_transfer_syntax() -> None:
    broken = _read(CR_JLSL)
    assert broken.file_meta.TransferSyntaxUID == JPEGLSLossless
    broken.PixelData = encapsulate([b"\xff\xd8 not a JPEG-LS stream " * 32])
    with pytest.raises(PixelDecodeError) as info:
        to_gray(broken)
    assert JPEGLSLossless in str(info.value)
    assert "JPEG-LS Lossless" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unsupported_transfer_syntax_names_it() -> None:
    odd = _read(CR_JLSL)  # fresh: pydicom caches a decoded array and would not notice the syntax change
    odd.file_meta.TransferSyntaxUID = pydicom.uid.UID("1.2.840.10008.1.2.4.100")  # MPEG2: no decoder exists
    with pytest.raises(PixelDecodeError, match=r"1\.2\.840\.10008\.1\.2\.4\.100"):
        to_gray(odd)


def test_missing_plugin_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host without the JPEG-LS plugins: the error tells the operator what to install."""
    decoder = get_decoder(JPEGLSLossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pyjpegls": ("pyjpegls>=1.2",)})
    with pytest.raises(PixelDecodeError, match=r"JPEG-LS Lossless.*missing dependencies.*pyjpegls>=1\.2"):
        to_gray(_read(CR_JLSL))


def test_voi_lut_sequence_is_used_and_scaled_by_its_entries() -> None:
    """A linear VOI LUT declared 16-bit but filled only to 12 bits (common) still spans [0, 1], not [0, 1/16].

    The file also has a window: the LUT must win, as in pydicom."""
    ds = _read(pydicom_data_file("RG3_UNCR.dcm"))  # 10-bit stored values
    item = pydicom.Dataset()
    item.LUTDescriptor = [1024, 0, 16]
    item.LUTData = [round(v * 4095 / 1023) for v in range(1024)]
    ds.VOILUTSequence = pydicom.Sequence([item])
    gray = to_gray(ds, "first")
    expected = 1.0 - ds.pixel_array.astype(np.float64) / 1023  # MONOCHROME1
    np.testing.assert_allclose(gray, expected, atol=1e-3)
