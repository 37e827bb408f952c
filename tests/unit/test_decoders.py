"""decode_pixels: the preferred (fastest) plugin gives pydicom's default pixels bit for bit, and falls back cleanly.

Real files (the CR hip and pydicom-data's RG1 chest) are transcoded once per session into every lossless syntax.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import UID

import predictd.models.decoders as decoders_module
from predictd.models.decoders import PREFERRED, decode_pixels
from predictd.models.preprocess import PixelDecodeError, to_gray
from tests.support import CR_JLSL, pydicom_data_file
from tests.support.transcode import LOSSLESS, SYNTAXES, accepts, transcode

SOURCES = {
    "cr_jlsl": CR_JLSL,  # 10 bits stored, MONOCHROME2
    "rg1_chest": pydicom_data_file("RG1_UNCR.dcm"),  # 15 bits stored, MONOCHROME1
}
CASES = [
    (source, syntax)
    for source, path in SOURCES.items()
    for syntax in SYNTAXES
    if syntax in LOSSLESS and accepts(int(pydicom.dcmread(path, stop_before_pixels=True).BitsStored), syntax)
]

Transcoded = Callable[[str, str], Path]


@pytest.fixture(scope="session")
def lossless_copies(tmp_path_factory: pytest.TempPathFactory) -> Transcoded:
    """(source, syntax) → path of the transcoded copy, made once per session."""
    root = tmp_path_factory.mktemp("decoders")
    cache: dict[tuple[str, str], Path] = {}

    def get(source: str, syntax: str) -> Path:
        if (source, syntax) not in cache:
            cache[source, syntax] = transcode(SOURCES[source], syntax, root / source / f"{syntax}.dcm")
        return cache[source, syntax]

    return get


@pytest.fixture(scope="session")
def source_pixels() -> dict[str, np.ndarray]:
    return {name: pydicom.dcmread(path).pixel_array for name, path in SOURCES.items()}


@pytest.mark.parametrize(("source", "syntax"), CASES)
def test_preferred_plugin_gives_the_default_pixels(
    source: str, syntax: str, lossless_copies: Transcoded, source_pixels: dict[str, np.ndarray]
) -> None:
    ds = pydicom.dcmread(lossless_copies(source, syntax))
    arr = decode_pixels(ds)
    np.testing.assert_array_equal(arr, pydicom.dcmread(lossless_copies(source, syntax)).pixel_array)
    np.testing.assert_array_equal(arr, source_pixels[source])
    assert arr.dtype == source_pixels[source].dtype


@pytest.mark.parametrize(("source", "syntax"), [c for c in CASES if UID(SYNTAXES[c[1]]).is_compressed])
def test_every_preferred_plugin_installed_is_lossless(
    source: str, syntax: str, lossless_copies: Transcoded, source_pixels: dict[str, np.ndarray]
) -> None:
    """Not only the first choice: a fallback plugin must give the same pixels too."""
    uid = SYNTAXES[syntax]
    ds = pydicom.dcmread(lossless_copies(source, syntax))
    tried = [name for name in PREFERRED.get(uid, ()) if name in get_decoder(uid).available_plugins]
    assert tried, f"no preferred plugin installed for {syntax}"
    for name in tried:
        np.testing.assert_array_equal(pixel_array(ds, decoding_plugin=name), source_pixels[source], err_msg=name)


@pytest.mark.parametrize("syntax", ["jpeg_lossless", "jpegls_lossless", "rle"])
def test_unavailable_preferred_plugin_falls_back(
    syntax: str, lossless_copies: Transcoded, source_pixels: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    uid = SYNTAXES[syntax]
    monkeypatch.setitem(decoders_module.PREFERRED, uid, ("no-such-plugin",))
    ds = pydicom.dcmread(lossless_copies("cr_jlsl", syntax))
    np.testing.assert_array_equal(decode_pixels(ds), source_pixels["cr_jlsl"])


def test_a_plugin_that_cannot_handle_the_file_hands_over(
    lossless_copies: Transcoded, source_pixels: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin that is installed but says it does not support the file: the next one (then pydicom's) decodes it."""
    real = decoders_module.pixel_array
    calls: list[str] = []

    def limited(ds: pydicom.Dataset, *, decoding_plugin: str = "") -> np.ndarray:
        calls.append(decoding_plugin)
        if decoding_plugin == "pyjpegls":
            raise RuntimeError("pyjpegls: this sample precision is not supported")
        return real(ds, decoding_plugin=decoding_plugin)

    monkeypatch.setattr(decoders_module, "pixel_array", limited)
    ds = pydicom.dcmread(lossless_copies("cr_jlsl", "jpegls_lossless"))
    np.testing.assert_array_equal(decode_pixels(ds), source_pixels["cr_jlsl"])
    assert calls[0] == "pyjpegls" and len(calls) == 2


def _flipped_bits(path: Path, flips: int, seed: int) -> pydicom.Dataset:
    """The file with ``flips`` bits of its encapsulated stream flipped (header and fragment items intact)."""
    ds = pydicom.dcmread(path)
    data = bytearray(ds.PixelData)
    rng = np.random.default_rng(seed)
    for i in rng.integers(len(data) // 4, len(data) - 16, size=flips):
        data[i] ^= 1 << int(rng.integers(8))
    ds.PixelData = bytes(data)
    return ds


def _count_plugin_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The plugins decode_pixels asks pydicom for, in order (each call still decodes for real)."""
    real = decoders_module.pixel_array
    calls: list[str] = []

    def counting(ds: pydicom.Dataset, *, decoding_plugin: str = "") -> np.ndarray:
        calls.append(decoding_plugin)
        return real(ds, decoding_plugin=decoding_plugin)

    monkeypatch.setattr(decoders_module, "pixel_array", counting)
    return calls


@pytest.mark.parametrize("flips", [1, 3, 10])
def test_a_corrupt_stream_fails_with_the_decoders_message_and_is_never_decoded_by_the_next(
    flips: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JPEG-LS with flipped bits: CharLS refuses it; pylibjpeg, next in line, would decode garbage. It must not run."""
    uid = SYNTAXES["jpegls_lossless"]
    if "pyjpegls" not in get_decoder(uid).available_plugins:
        pytest.skip("pyjpegls not installed")
    calls = _count_plugin_calls(monkeypatch)
    ds = _flipped_bits(CR_JLSL, flips, seed=flips)
    with pytest.raises(PixelDecodeError) as info:
        to_gray(ds)
    message = str(info.value)
    assert "refused by the pyjpegls decoder" in message and "JPEG-LS" in message, message
    assert calls == ["pyjpegls"]


def test_decoded_once_and_cached_like_pixel_array(lossless_copies: Transcoded, monkeypatch: pytest.MonkeyPatch) -> None:
    """to_gray for two windows (inference does) must not decode twice; ds.pixel_array sees the same array."""
    calls = _count_plugin_calls(monkeypatch)
    ds = pydicom.dcmread(lossless_copies("cr_jlsl", "jpegls_lossless"))
    before = dict(ds._pixel_array_opts)
    first = decode_pixels(ds)
    assert decode_pixels(ds) is first
    assert ds.pixel_array is first
    assert calls == [PREFERRED[SYNTAXES["jpegls_lossless"]][0]]
    assert ds._pixel_array_opts == before
    ds.PixelData = bytes(ds.PixelData)  # new pixel data: the cache no longer applies
    assert decode_pixels(ds) is not first
    assert len(calls) == 2


def test_pixel_array_options_of_the_caller_are_honoured(
    lossless_copies: Transcoded, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(decoders_module, "pixel_array", lambda ds, **kw: calls.append(kw["decoding_plugin"]))
    ds = pydicom.dcmread(lossless_copies("cr_jlsl", "jpegls_lossless"))
    ds.pixel_array_options(decoding_plugin="pylibjpeg", index=0)
    assert decode_pixels(ds).shape == (ds.Rows, ds.Columns)
    assert calls == []


def test_no_plugin_at_all_still_names_syntax_and_package(
    lossless_copies: Transcoded, monkeypatch: pytest.MonkeyPatch
) -> None:
    uid = UID(SYNTAXES["jpegls_lossless"])
    decoder = get_decoder(uid)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"fakeplugin": ("fake-codec>=9.9",)})
    ds = pydicom.dcmread(lossless_copies("cr_jlsl", "jpegls_lossless"))
    with pytest.raises(PixelDecodeError, match=r"fake-codec>=9\.9") as info:
        to_gray(ds)
    assert uid in str(info.value)


def test_preferred_names_are_pydicom_plugins() -> None:
    """A typo in PREFERRED would silently never match: every name must be a plugin pydicom knows for that syntax."""
    for uid, names in PREFERRED.items():
        decoder = get_decoder(uid)
        known = set(decoder.available_plugins) | set(decoder._unavailable)
        assert set(names) <= known, f"{UID(uid).name}: {set(names) - known}"
