"""Probe images: out-of-domain images a model must refuse, to measure its domain gate (``predictd evaluate --ood``),
and reframings of an in-domain image that must not change its answer (:func:`framings`).

Categories: synthetic images that are no radiograph at all (blank, noise, smooth blobs, gradients, a checkerboard,
text-only pages of either polarity), every CR/DX image of the pydicom-data package when it is installed (WG04 RG1
chest and RG3 leg: body parts the shipped models do not cover), other modalities of that package (MR, CT,
ultrasound), and whatever the caller adds: DICOM folders (``../shared/data/dicom``: a real CR single-hip view no web
JPEG resembles) and other manifests (the other model's images). Synthetic probes are seeded: the same set every run.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont

from predictd.models.data import Record, load_gray
from predictd.models.preprocess import PixelDecodeError, to_gray

SIDE = 512
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RG"})
OTHER_MODALITIES = frozenset({"MR", "CT", "US", "NM", "PT", "XA"})


@dataclass(frozen=True)
class Probe:
    category: str
    name: str
    gray: np.ndarray
    """Float32 2-D in [0, 1], as models.preprocess.to_gray gives it."""
    modality: str = ""
    """The DICOM Modality of a DICOM probe ("" for the others): the daemon's routing reads it before any model."""


def _text_page(rng: np.random.Generator, dark_text: bool) -> np.ndarray:
    img = Image.new("L", (SIDE, int(SIDE * 0.75)), 255 if dark_text else 0)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=int(rng.integers(18, 34)))
    for row in range(10):
        words = " ".join("".join(chr(int(c)) for c in rng.integers(65, 91, int(rng.integers(3, 9)))) for _ in range(5))
        draw.text((12, 10 + row * 36), words, fill=0 if dark_text else 255, font=font)
    return np.asarray(img, dtype=np.float32) / 255.0


def synthetic(seed: int = 0, copies: int = 4) -> list[Probe]:
    """Images that are not radiographs: blank, noise, blobs, gradients, checkerboard, text pages."""
    rng = np.random.default_rng(seed)
    probes = [
        Probe("blank", "black", np.zeros((SIDE, SIDE), np.float32)),
        Probe("blank", "white", np.ones((SIDE, SIDE), np.float32)),
        Probe("blank", "mid-gray", np.full((SIDE, SIDE), 0.5, np.float32)),
    ]
    ramp = np.tile(np.linspace(0, 1, SIDE, dtype=np.float32), (SIDE, 1))
    probes += [Probe("pattern", "horizontal ramp", ramp), Probe("pattern", "vertical ramp", ramp.T.copy())]
    checker = ((np.indices((SIDE, SIDE)) // 32).sum(axis=0) % 2).astype(np.float32)
    probes.append(Probe("pattern", "checkerboard", checker))
    for i in range(copies):
        gauss = np.clip(rng.normal(0.5, rng.uniform(0.05, 0.3), (SIDE, SIDE)), 0, 1).astype(np.float32)
        probes.append(Probe("noise", f"gaussian {i}", gauss))
        probes.append(Probe("noise", f"uniform {i}", rng.random((SIDE, SIDE)).astype(np.float32)))
        coarse = rng.random((int(rng.integers(4, 16)),) * 2).astype(np.float32)
        blob = np.asarray(Image.fromarray(coarse, mode="F").resize((SIDE, SIDE), Image.Resampling.BICUBIC))
        probes.append(Probe("noise", f"smooth blobs {i}", np.clip(blob, 0, 1).astype(np.float32)))
        probes.append(Probe("text", f"text page {i}", _text_page(rng, dark_text=i % 2 == 0)))
    return probes


def _dicom_probe(path: Path, category: str) -> Probe | None:
    try:
        ds = pydicom.dcmread(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gray = to_gray(ds)
    except (PixelDecodeError, pydicom.errors.InvalidDicomError, AttributeError, ValueError, OSError):
        return None  # not an image predictd could read: the receiver would refuse it before any model
    if min(gray.shape) < 32:
        return None
    return Probe(category, path.name, gray, str(ds.get("Modality", "") or "").strip().upper())


def pydicom_data(
    modalities: Iterable[str] = RADIOGRAPH_MODALITIES, category: str = "pydicom-data CR/DX"
) -> list[Probe]:
    """Every readable single-image file of the pydicom-data package with one of ``modalities``; [] without it."""
    try:
        import data_store  # the module the pydicom-data package installs
    except ImportError:
        return []
    wanted = set(modalities)
    probes = []
    for path in sorted((Path(data_store.__file__).parent / "data").glob("*.dcm")):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError):
            continue
        if str(header.get("Modality", "")) in wanted and int(header.get("NumberOfFrames", 1) or 1) == 1:
            probe = _dicom_probe(path, category)
            if probe is not None:
                probes.append(probe)
    return probes


def dicom_folder(folder: Path, category: str | None = None) -> list[Probe]:
    """Every readable DICOM image under ``folder``."""
    found = (_dicom_probe(p, category or f"DICOM {folder.name}") for p in sorted(Path(folder).rglob("*.dcm")))
    return [p for p in found if p is not None]


def manifest_images(records: Sequence[Record], category: str, limit: int | None = None) -> list[Probe]:
    """The images of another manifest (another model's domain), all splits, the first ``limit`` by path."""
    chosen = sorted(records, key=lambda r: r.path.as_posix())[:limit]
    return [Probe(category, r.path.name, load_gray(r.path)) for r in chosen]


def default_probes(seed: int = 0) -> list[Probe]:
    """The probes every evaluation runs: synthetic, pydicom-data radiographs and other modalities."""
    return synthetic(seed) + pydicom_data() + pydicom_data(OTHER_MODALITIES, "pydicom-data other modalities")


def framings(gray: np.ndarray) -> dict[str, np.ndarray]:
    """Five framings of one radiograph: padded to a square (black, white), letterboxed, pillarboxed, cropped 3%.

    A model that reads the content, not the frame, gives all of them the answer it gives the original.
    """
    h, w = gray.shape
    side = max(h, w)

    def framed(value: float, top: int, bottom: int, left: int, right: int) -> np.ndarray:
        out = np.full((h + top + bottom, w + left + right), value, dtype=np.float32)
        out[top : top + h, left : left + w] = gray
        return out

    pad_h, pad_w = side - h, side - w
    margin_h, margin_w = h // 30, w // 30
    return {
        "square, black": framed(0.0, pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2),
        "square, white": framed(1.0, pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2),
        "letterbox, black": framed(0.0, h // 4, h // 4, 0, 0),
        "pillarbox, gray": framed(0.5, 0, 0, w // 3, w // 3),
        "cropped 3%": np.ascontiguousarray(gray[margin_h : h - margin_h, margin_w : w - margin_w]),
    }


def _reported(card: Any, probs: np.ndarray) -> str:
    top = int(np.argmax(probs))
    key = card.label_keys[top]
    return key if probs[top] >= card.thresholds.get(key, 0.0) else "indeterminate"


def framing_changes(model: Any, card: Any, grays: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """Per image: whether every framing kept the label, and the largest probability change (models.train logits).

    The label is the one a report shows: the top class at or above its card threshold, else "indeterminate"; two
    framings of a near-uniform answer (0.30 / 0.29) whose top classes swap both read "indeterminate"."""
    import torch

    from predictd.models.preprocess import gray_to_input
    from predictd.models.train_data import predict_logits

    out = []
    for gray in grays:
        variants = [gray, *framings(gray).values()]
        x = torch.from_numpy(np.stack([gray_to_input(v, card.preprocessing) for v in variants]))
        probs = torch.softmax(predict_logits(model, x, torch.device("cpu")) / card.temperature, dim=1).numpy()
        labels = {_reported(card, row) for row in probs}
        out.append({"same_label": len(labels) == 1,
                    "max_change": float(np.abs(probs - probs[0]).max())})  # fmt: skip
    return out
