"""Engine decode workers (process pool), pipelined predict_files, and the forward_only benchmark hook (CPU)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from predictd.models.card import Label
from predictd.models.demo import write_model
from predictd.models.inference import Engine
from predictd.models.prediction import Prediction
from predictd.models.preprocess import PixelDecodeError, preprocess
from tests.support import CR_JLSL, pydicom_data_file

LABELS = (Label("a", "class a"), Label("b", "class b"), Label("c", "class c"))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_model(root / "alpha", name="alpha", task="t", labels=LABELS, input_size=32, seed=1)
    write_model(root / "beta", name="beta", task="t", labels=LABELS, input_size=48, seed=2)
    return root


@pytest.fixture(scope="module")
def files() -> list[Path]:
    return [CR_JLSL, pydicom_data_file("RG1_UNCR.dcm")]


@pytest.fixture(scope="module")
def pooled(models_dir: Path) -> Iterator[Engine]:
    with Engine.load(models_dir, batch_size=2, decode_workers=2) as engine:
        yield engine


def _same(a: list[Prediction], b: list[Prediction]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.model_name, x.sop_instance_uid, x.series_instance_uid) == (
            y.model_name,
            y.sop_instance_uid,
            y.series_instance_uid,
        )
        assert list(x.probabilities) == list(y.probabilities)
        np.testing.assert_allclose(list(x.probabilities.values()), list(y.probabilities.values()), atol=1e-6)
        assert x.label == y.label


def test_pool_matches_in_process(models_dir: Path, files: list[Path], pooled: Engine) -> None:
    in_process = Engine.load(models_dir, batch_size=2)
    assert in_process.decode_workers == 0 and pooled.decode_workers == 2
    expected = in_process.predict([pydicom.dcmread(f) for f in files])
    _same(in_process.predict_files(files), expected)
    _same(pooled.predict_files(files), expected)
    _same(pooled.predict([pydicom.dcmread(f) for f in files]), expected)


def test_batches_spanning_studies_keep_order_and_uids(tmp_path: Path, files: list[Path], pooled: Engine) -> None:
    # Five "studies" of one or two images: 7 files, batch_size 2, so batches straddle study boundaries.
    paths: list[Path] = []
    uids: list[tuple[str, str]] = []
    for study in range(5):
        for image in range(1 + study % 2):
            ds = pydicom.dcmread(files[(study + image) % 2])
            ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.1.{study}"
            ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.1.{study}.1"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.10.1.{study}.1.{image}"
            path = tmp_path / f"{study}_{image}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
            uids.append((ds.SeriesInstanceUID, ds.SOPInstanceUID))
    predictions = pooled.predict_files(paths)
    assert len(predictions) == 2 * len(paths)
    got = [(p.series_instance_uid, p.sop_instance_uid) for p in predictions]
    assert got == [uid for uid in uids for _ in ("alpha", "beta")]
    assert [p.model_name for p in predictions] == ["alpha", "beta"] * len(paths)
    # Same file, same answer, wherever it fell in the batches.
    by_source = {}
    for i, path in enumerate(paths):
        source = pydicom.dcmread(path).Rows
        for p in predictions[2 * i : 2 * i + 2]:
            by_source.setdefault((source, p.model_name), []).append(list(p.probabilities.values()))
    for probs in by_source.values():
        np.testing.assert_allclose(probs, [probs[0]] * len(probs), atol=1e-6)


def test_errors_come_back_from_workers(tmp_path: Path, files: list[Path], pooled: Engine) -> None:
    ds = pydicom.dcmread(files[0])
    del ds.PixelData
    broken = tmp_path / "no_pixels.dcm"
    ds.save_as(broken, enforce_file_format=True)
    with pytest.raises(PixelDecodeError, match=ds.SOPInstanceUID.replace(".", r"\.")):
        pooled.predict_files([files[1], broken, files[0]])
    with pytest.raises(FileNotFoundError):
        pooled.predict_files([tmp_path / "missing.dcm"])
    assert len(pooled.predict_files(files[:1])) == 2  # the pool still works after an error


def test_forward_only_shape(models_dir: Path, files: list[Path], pooled: Engine) -> None:
    card = next(c for c in pooled.cards if c.name == "beta")
    x = np.stack([preprocess(pydicom.dcmread(f), card.preprocessing) for f in files])
    logits = pooled.forward_only(x, "beta")
    assert logits.shape == (2, 3) and logits.dtype == np.float32
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    by_predict = [p for p in pooled.predict_files(files) if p.model_name == "beta"]
    np.testing.assert_allclose(probs, [list(p.probabilities.values()) for p in by_predict], atol=1e-5)
    with pytest.raises(KeyError):
        pooled.forward_only(x, "nope")
    with pytest.raises(ValueError):
        pooled.forward_only(x[0], "beta")


def test_cpu_options_keep_predictions(models_dir: Path, files: list[Path]) -> None:
    """channels_last and zero-padded batches (what compile uses) must not change results; bf16 only a little."""
    plain = Engine.load(models_dir, batch_size=4).predict_files(files)
    engine = Engine.load(models_dir, batch_size=4, channels_last=True)
    engine._pad_batches = True  # the compile path's padding, without paying for a compile here
    _same(engine.predict_files(files), plain)
    bf16 = Engine.load(models_dir, batch_size=4, cpu_bf16=True).predict_files(files)
    for x, y in zip(bf16, plain, strict=True):
        np.testing.assert_allclose(list(x.probabilities.values()), list(y.probabilities.values()), atol=0.05)


def test_decode_workers_validated(models_dir: Path) -> None:
    with pytest.raises(ValueError, match="decode_workers"):
        Engine.load(models_dir, decode_workers=-1)


def _poison_copy(source: Path, folder: Path) -> tuple[Path, str]:
    from tests.support.crash import POISON_SUFFIX

    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.99.1"
    path = folder / POISON_SUFFIX
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SOPInstanceUID)


def test_a_worker_killed_by_one_image_names_it_and_the_engine_goes_on(
    tmp_path: Path, models_dir: Path, files: list[Path], pooled: Engine
) -> None:
    """Three batches in flight, one image aborts its worker: the error names that image (reproduced alone), and the
    rebuilt pool decodes the good images as before."""
    from predictd.models.decode_pool import DecodeWorkerError
    from tests.support.crash import prepare_or_abort

    poison, uid = _poison_copy(files[1], tmp_path)
    jobs = [(prepare_or_abort, str(p)) for p in [files[0], files[1], poison, files[0], files[1]]]
    with pytest.raises(DecodeWorkerError) as info:
        pooled._run_pipeline(jobs)
    assert info.value.reproduced and info.value.instance == uid
    assert uid in str(info.value) and "Explicit VR Little Endian" in str(info.value)
    _same(pooled.predict_files(files), Engine.load(models_dir, batch_size=2).predict_files(files))


def test_the_decoder_that_crashes_natively_is_named(tmp_path: Path) -> None:
    """A JPEG-LS header claiming 40000 x 40000 pixels: GDCM aborts the process (an uncatchable C++ exception), CharLS
    refuses it with an error. Probing each plugin in its own worker finds GDCM, and the caller lives."""
    from functools import partial

    from predictd.models.decode_pool import DecodePool, _decode_with

    ds = pydicom.dcmread(CR_JLSL)
    ds.Rows = ds.Columns = 40000
    hostile = tmp_path / "huge.dcm"
    ds.save_as(hostile)
    pool = DecodePool(1)
    try:
        assert pool._kills_a_worker(partial(_decode_with, plugin="gdcm"), str(hostile))
        assert not pool._kills_a_worker(partial(_decode_with, plugin="pyjpegls"), str(hostile))
        assert not pool._kills_a_worker(partial(_decode_with, plugin="gdcm"), str(CR_JLSL))
    finally:
        pool.close()
