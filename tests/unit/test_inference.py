"""models.inference with tiny real timm models written by models.demo, on the real hip radiograph (CPU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydicom
import pytest

from predictd.models.card import CARD_FILE, CardError, Label, ModelCard
from predictd.models.demo import DEMO_LABELS, DEMO_NAME, install_demo, write_model
from predictd.models.inference import Engine
from predictd.models.loading import NoModelsError
from predictd.models.prediction import Prediction
from predictd.models.preprocess import PixelDecodeError, laterality_of
from tests.support import CR_JLSL, pydicom_data_file

LABELS = (Label("a", "class a"), Label("b", "class b"), Label("c", "class c"))


@pytest.fixture(scope="module")
def images() -> list[pydicom.Dataset]:
    return [pydicom.dcmread(CR_JLSL), pydicom.dcmread(pydicom_data_file("RG3_UNCR.dcm"))]


def _model(models_dir: Path, name: str = "tiny", **kwargs: Any) -> ModelCard:
    return write_model(models_dir / name, name=name, task="test_task", labels=LABELS, **kwargs)


def test_predict_every_model_on_every_image(tmp_path: Path, images: list[pydicom.Dataset]) -> None:
    _model(tmp_path, "zeta", version="2.0.0", seed=1)
    _model(tmp_path, "alpha", version="1.0.0", input_size=32)
    engine = Engine.load(tmp_path, batch_size=1)
    assert engine.device == "cpu"
    assert [c.name for c in engine.cards] == ["alpha", "zeta"]
    assert engine.model_versions == "alpha@1.0.0,zeta@2.0.0"

    predictions = engine.predict(images)
    assert len(predictions) == len(images) * 2
    for i, ds in enumerate(images):
        for p, card in zip(predictions[2 * i : 2 * i + 2], engine.cards, strict=True):
            assert isinstance(p, Prediction)
            assert (p.model_name, p.model_version, p.task) == (card.name, card.version, "test_task")
            assert p.sop_instance_uid == ds.SOPInstanceUID
            assert p.series_instance_uid == ds.SeriesInstanceUID
            assert p.label in card.label_keys
            assert list(p.probabilities) == card.label_keys
            assert all(type(v) is float for v in p.probabilities.values())
            assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
            assert p.probability == max(p.probabilities.values())
            assert p.probabilities[p.label] == p.probability
            assert p.laterality == laterality_of(ds)  # a whole-image card reports the image's own laterality
            assert p.untrained is True
    assert engine.predict([]) == []


def test_batching_does_not_change_results(tmp_path: Path, images: list[pydicom.Dataset]) -> None:
    _model(tmp_path)
    one = Engine.load(tmp_path, batch_size=1).predict(images)
    many = Engine.load(tmp_path, batch_size=16).predict(images)
    for a, b in zip(one, many, strict=True):
        assert a.label == b.label
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)


def test_channels_last_is_the_default_on_cpu_and_changes_no_answer(
    tmp_path: Path, images: list[pydicom.Dataset]
) -> None:
    import torch

    _model(tmp_path)
    default, contiguous = Engine.load(tmp_path, device="cpu"), Engine.load(tmp_path, device="cpu", channels_last=False)
    weight = next(p for p in default.resident("tiny").model.parameters() if p.ndim == 4 and p.shape[1] > 1)
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    for a, b in zip(default.predict(images), contiguous.predict(images), strict=True):
        assert a.label == b.label
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)


def test_same_seed_same_weights(tmp_path: Path) -> None:
    assert _model(tmp_path / "x").sha256 == _model(tmp_path / "y").sha256
    assert _model(tmp_path / "x").sha256 != _model(tmp_path / "z", seed=3).sha256


def test_rewritten_weights_rejected(tmp_path: Path) -> None:
    card = _model(tmp_path)
    other = _model(tmp_path / "elsewhere", seed=7)
    foreign = (tmp_path / "elsewhere" / "tiny" / other.weights_file).read_bytes()
    (tmp_path / "tiny" / card.weights_file).write_bytes(foreign)
    with pytest.raises(CardError, match="sha256"):
        Engine.load(tmp_path)


def _edit_card(directory: Path, **changes: object) -> None:
    path = directory / CARD_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_edited_card_sha256_rejected(tmp_path: Path) -> None:
    _model(tmp_path)
    _edit_card(tmp_path / "tiny", sha256="0" * 64)
    with pytest.raises(CardError, match="sha256"):
        Engine.load(tmp_path)


def test_empty_card_sha256_rejected(tmp_path: Path) -> None:
    _model(tmp_path)
    _edit_card(tmp_path / "tiny", sha256="")
    with pytest.raises(CardError, match="no sha256"):
        Engine.load(tmp_path)


def test_missing_weights_rejected(tmp_path: Path) -> None:
    card = _model(tmp_path)
    (tmp_path / "tiny" / card.weights_file).unlink()
    with pytest.raises(CardError, match="missing"):
        Engine.load(tmp_path)


def test_weights_of_another_architecture_rejected(tmp_path: Path) -> None:
    _model(tmp_path)
    _edit_card(tmp_path / "tiny", arch="test_resnet")  # sha256 still matches: the strict load must catch it
    with pytest.raises(CardError, match="do not fit"):
        Engine.load(tmp_path)


def test_threshold_above_one_gives_indeterminate(tmp_path: Path, images: list[pydicom.Dataset]) -> None:
    _model(tmp_path, thresholds={"a": 1.01, "b": 1.01, "c": 1.01})
    for p in Engine.load(tmp_path).predict(images):
        assert p.label == Prediction.INDETERMINATE
        assert p.is_indeterminate
        assert p.probability == max(p.probabilities.values())


def test_empty_dir_raises_no_models(tmp_path: Path) -> None:
    with pytest.raises(NoModelsError, match="install-demo") as info:
        Engine.load(tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(NoModelsError):
        Engine.load(tmp_path / "does-not-exist")


def test_enabled_selects_and_names_missing(tmp_path: Path) -> None:
    _model(tmp_path, "one")
    _model(tmp_path, "two")
    assert [c.name for c in Engine.load(tmp_path, enabled=["two"]).cards] == ["two"]
    with pytest.raises(CardError, match="missing"):
        Engine.load(tmp_path, enabled=["missing"])


def test_temperature_changes_probabilities_not_argmax(tmp_path: Path, images: list[pydicom.Dataset]) -> None:
    _model(tmp_path / "t1", temperature=1.0)
    _model(tmp_path / "t01", temperature=0.01)
    plain = Engine.load(tmp_path / "t1").predict(images)
    sharp = Engine.load(tmp_path / "t01").predict(images)
    for a, b in zip(plain, sharp, strict=True):
        assert a.label == b.label
        assert b.probability > a.probability
        assert a.probabilities != pytest.approx(b.probabilities, abs=1e-3)


def test_decode_error_names_instance(tmp_path: Path) -> None:
    _model(tmp_path)
    ds = pydicom.dcmread(CR_JLSL)
    del ds.PixelData
    with pytest.raises(PixelDecodeError, match=ds.SOPInstanceUID.replace(".", r"\.")):
        Engine.load(tmp_path).predict([ds])


def test_install_demo(tmp_path: Path, images: list[pydicom.Dataset]) -> None:
    card = install_demo(tmp_path)
    assert card.name == DEMO_NAME
    assert card.untrained is True
    assert "meaningless" in card.description
    assert len(card.labels) == 9
    assert all(label.code_value is None for label in card.labels)
    assert card.label_keys == [label.key for label in DEMO_LABELS]
    assert (tmp_path / DEMO_NAME / card.weights_file).stat().st_size < 1_000_000
    assert ModelCard.load(tmp_path / DEMO_NAME) == card
    engine = Engine.load(tmp_path)
    predictions = engine.predict(images[:1])  # the real hip: a portrait single-hip view, read whole
    assert [p.region for p in predictions] == [None]
    assert all(p.task == "hip_hardware" and p.untrained for p in predictions)
    assert card.applies_to.body_parts == ("hip_pelvis", "femur") and card.bilateral


def test_torch_gets_every_cpu_unless_told(tmp_path: Path) -> None:
    import os

    import torch

    _model(tmp_path)
    before = torch.get_num_threads()
    try:
        Engine.load(tmp_path, device="cpu", torch_threads=1)
        assert torch.get_num_threads() == 1
        Engine.load(tmp_path, device="cpu")  # 0: every CPU this process may use
        assert torch.get_num_threads() == len(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(before)
