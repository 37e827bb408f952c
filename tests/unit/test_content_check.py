"""The check before any model: blank, noise, text and smooth patterns are no radiograph; real radiographs, framed,
noisy or written on, are."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw

from predictd.models import data, probes
from predictd.models.content_check import content_problem, content_stats
from predictd.models.install import shipped
from predictd.models.preprocess import to_gray
from tests.support import CR_JLSL, pydicom_data_file


@pytest.fixture(scope="module")
def radiograph() -> np.ndarray:
    return to_gray(pydicom.dcmread(CR_JLSL))


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_a_blank_image_is_refused_as_blank(value: float) -> None:
    problem = content_problem(np.full((300, 200), value, np.float32))
    assert problem is not None and "blank" in problem


def test_noise_and_text_pages_are_refused() -> None:
    found = {p.name: content_problem(p.gray) for p in probes.synthetic() if p.category in ("noise", "text")}
    pixel_noise = {n: v for n, v in found.items() if "blobs" not in n}
    assert pixel_noise and all(v is not None and "noise or text" in v for v in pixel_noise.values()), pixel_noise


def test_smooth_patterns_without_an_edge_are_refused() -> None:
    ramp = np.tile(np.linspace(0, 1, 512, dtype=np.float32), (512, 1))
    problem = content_problem(ramp)
    assert problem is not None and "no edge" in problem
    coarse = np.random.default_rng(1).random((6, 6)).astype(np.float32)
    blobs = np.asarray(Image.fromarray(coarse, mode="F").resize((512, 512), Image.Resampling.BICUBIC))
    assert content_problem(np.clip(blobs, 0, 1)) is not None


@pytest.mark.parametrize("file", [CR_JLSL, pydicom_data_file("RG1_UNCR.dcm"), pydicom_data_file("RG3_UNCR.dcm")])
def test_real_radiographs_pass(file: object) -> None:
    stats = content_stats(to_gray(pydicom.dcmread(file)))
    assert stats.problem is None, stats


def test_a_radiograph_framed_noisy_or_written_on_still_passes(radiograph: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    noisy = np.clip(radiograph + rng.normal(0, 0.08, radiograph.shape).astype(np.float32), 0, 1)
    marked = Image.fromarray((radiograph * 255).astype(np.uint8))
    ImageDraw.Draw(marked).text((40, 40), "L  PORTABLE  SUPINE", fill=255, font_size=120)
    variants = {**probes.framings(radiograph), "detector noise": noisy,
                "burnt-in text": np.asarray(marked, np.float32) / 255}  # fmt: skip
    assert {name: content_problem(gray) for name, gray in variants.items()} == dict.fromkeys(variants)


@pytest.mark.shared_data
def test_no_image_the_shipped_models_learned_from_is_refused() -> None:
    for folder in shipped().values():
        refused = [r.path.name for r in data.read_manifest(folder / "manifest.csv")
                   if content_problem(data.load_gray(r.path)) is not None]  # fmt: skip
        assert refused == []
