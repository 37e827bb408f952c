"""Every transfer syntax a PACS may send decodes, and to the same image: real files transcoded with dcmtk / pydicom.

Lossless syntaxes must give the identical pixel array and identical ``to_gray`` output; lossy ones a close image;
MONOCHROME1 must come out with bone bright whatever the encoding. Each source is transcoded once per session.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import UID, HTJ2KLossless

import tests.support.transcode as transcode_module
from predictd.models.preprocess import PixelDecodeError, resize_pad, to_gray
from tests.support import CR_JLSL, pydicom_data_file
from tests.support.transcode import (
    JPEGLS_NEAR,
    LOSSLESS,
    SYNTAXES,
    TranscodeToolMissing,
    accepts,
    transcode,
)

SOURCES = {
    "cr_jlsl": CR_JLSL,  # CR, 10 bits stored, MONOCHROME2, JPEG-LS lossless
    "rg1_chest": pydicom_data_file("RG1_UNCR.dcm"),  # CR, 15 bits stored, MONOCHROME1, explicit VR LE
}
WINDOWS = ("first", "minmax")
LOSSY_GRAY_MAE = 0.01
"""Mean absolute ``to_gray`` error allowed for lossy syntaxes (1 % of the display range; seen: 0.00004-0.0046)."""

Transcoded = Callable[[str, str], Path]
Reference = dict[str, tuple[pydicom.Dataset, np.ndarray, dict[str, np.ndarray]]]


@pytest.fixture(scope="session")
def transcoded(tmp_path_factory: pytest.TempPathFactory) -> Transcoded:
    """(source, syntax) → path of the transcoded copy, made once per session."""
    root = tmp_path_factory.mktemp("transcoded")
    cache: dict[tuple[str, str], Path] = {}

    def get(source: str, syntax: str) -> Path:
        if (source, syntax) not in cache:
            cache[source, syntax] = transcode(
                SOURCES[source], syntax, root / source / f"{syntax}.dcm", allow_rescale=True
            )
        return cache[source, syntax]

    return get


@pytest.fixture(scope="session")
def reference() -> Reference:
    """Per source: dataset, decoded pixel array, and ``to_gray`` for each window."""
    out: Reference = {}
    for name, path in SOURCES.items():
        ds = pydicom.dcmread(path)
        out[name] = (ds, ds.pixel_array, {w: to_gray(ds, w) for w in WINDOWS})
    return out


def _bone_minus_background(gray: np.ndarray, source: str) -> float:
    """Bone (tibia / thoracic spine) minus air or lung, on the 384-pixel display."""
    small = resize_pad(gray, 384)
    if source == "cr_jlsl":
        return float(small[64:192, 176:208].mean() - small[64:256, 112:128].mean())
    return float(small[100:200, 178:198].mean() - small[60:120, 70:120].mean())


@pytest.mark.parametrize("syntax", list(SYNTAXES))
@pytest.mark.parametrize("source", list(SOURCES))
def test_transcoded_copy_decodes_to_the_same_image(
    source: str,
    syntax: str,
    transcoded: Transcoded,
    reference: Reference,
) -> None:
    original, pixels, grays = reference[source]
    ds = pydicom.dcmread(transcoded(source, syntax))

    assert ds.file_meta.TransferSyntaxUID == SYNTAXES[syntax]
    assert ds.SOPInstanceUID != original.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.PhotometricInterpretation == original.PhotometricInterpretation
    assert (ds.Rows, ds.Columns) == (original.Rows, original.Columns)

    decoded = {w: to_gray(ds, w) for w in WINDOWS}
    if syntax in LOSSLESS:
        np.testing.assert_array_equal(ds.pixel_array, pixels)
        for w in WINDOWS:
            np.testing.assert_array_equal(decoded[w], grays[w])
    else:
        assert ds.LossyImageCompression == "01"
        for w in WINDOWS:
            mae = float(np.abs(decoded[w] - grays[w]).mean())
            assert mae < LOSSY_GRAY_MAE, f"{w}: mean abs error {mae:.4f}"
        if syntax == "jpegls_near":  # near-lossless has a hard bound on every stored value
            diff = np.abs(ds.pixel_array.astype(np.int64) - pixels.astype(np.int64))
            assert diff.max() <= JPEGLS_NEAR
        elif syntax == "j2k_lossy":  # same stored-value scale (dcmcjpeg's lossy JPEG rescales it: not comparable)
            diff = np.abs(ds.pixel_array.astype(np.float64) - pixels)
            assert diff.mean() < 0.01 * float(np.ptp(pixels))

    # Bone bright in every syntax: MONOCHROME1 (the chest) must have been inverted, MONOCHROME2 (the hip) not.
    for w in WINDOWS:
        assert _bone_minus_background(decoded[w], source) > 0.2


def test_jpeg_lossy_refuses_deep_sources_unless_rescaling_is_allowed(tmp_path: Path) -> None:
    assert accepts(8, "jpeg_baseline") and not accepts(10, "jpeg_baseline")
    assert accepts(12, "jpeg_extended") and not accepts(15, "jpeg_extended")
    assert accepts(16, "jpegls_lossless")
    with pytest.raises(ValueError, match=r"jpeg_baseline takes at most 8 bits stored.*has 10"):
        transcode(CR_JLSL, "jpeg_baseline", tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_unknown_syntax(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown syntax 'jpeg_xl'"):
        transcode(CR_JLSL, "jpeg_xl", tmp_path / "x.dcm")


def test_missing_dcmtk_tool_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(transcode_module.shutil, "which", lambda name: None if name == "dcmcjpls" else real_which(name))
    with pytest.raises(TranscodeToolMissing, match=r"dcmcjpls not found on PATH.*jpegls_near.*install dcmtk"):
        transcode(CR_JLSL, "jpegls_near", tmp_path / "x.dcm")


def test_missing_encoder_plugin_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = get_encoder(SYNTAXES["j2k_lossless"])
    monkeypatch.setattr(encoder, "_available", {})
    monkeypatch.setattr(encoder, "_unavailable", {"pylibjpeg": ("pylibjpeg-openjpeg>=2.0",)})
    with pytest.raises(TranscodeToolMissing, match=r"j2k_lossless.*pylibjpeg-openjpeg>=2\.0"):
        transcode(CR_JLSL, "j2k_lossless", tmp_path / "x.dcm")


COMPRESSED = [s for s in SYNTAXES if UID(SYNTAXES[s]).is_compressed]


@pytest.mark.parametrize("syntax", COMPRESSED)
def test_decode_failure_names_syntax_and_missing_plugin(
    syntax: str, transcoded: Transcoded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host without the decoder plugins: the error says which syntax, and what to install."""
    uid = UID(SYNTAXES[syntax])
    decoder = get_decoder(uid)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"fakeplugin": ("fake-codec>=9.9",)})
    ds = pydicom.dcmread(transcoded("cr_jlsl", syntax))
    with pytest.raises(PixelDecodeError) as info:
        to_gray(ds)
    message = str(info.value)
    assert uid in message
    assert uid.name in message
    assert "fake-codec>=9.9" in message


def test_htj2k_has_a_decoder_but_no_encoder() -> None:
    """HTJ2K decodes with pylibjpeg-openjpeg; no encoder exists here, so SYNTAXES has no HTJ2K file to test on."""
    decoder = get_decoder(HTJ2KLossless)
    assert decoder.is_available
    assert "pylibjpeg" in decoder.available_plugins
    assert HTJ2KLossless not in SYNTAXES.values()
