"""Is there a radiograph in the pixels at all? A check before any model, the same for every model.

Why, beside the domain gate (models.gate): the gate is learned from a few hundred images and judges what a small
network's features make of an image; measured on the shipped shoulder model, it let one blank image and three of
twelve noise images through. Three plain statistics of the image itself, at a fixed working size (long side 256 px,
after the content crop of models.preprocess), tell those apart from any radiograph without learning anything
(measured on the 562 images of the shipped models' manifests, all splits, and the real CRs of pydicom-data and
../shared/data/dicom):

- **spread**, the 1st to 99th percentile range of the grey levels: 0 for a blank image, at least 0.35 on every
  radiograph;
- **smoothness**, the correlation of each pixel with its right and its lower neighbour (the lower of the two): pixel
  noise scores 0.29-0.30 and a text-only page 0.52-0.55, every radiograph at least 0.92 (CT/MR/US 0.85);
- **sharpness**, the 99.9th percentile of the steps between neighbours, over the spread: a radiograph has edges
  (cortex, skin line, metal, collimation), at least 0.072 on every one (0.24-0.30 on the real CRs); a smooth
  pattern of blobs or a ramp has none (0.004-0.06).

The thresholds sit at half or less of the radiographs' minima, so a real radiograph (burnt-in text, the noise of a
low-dose detector and all) does not fail them; what fails them gets no label from any model. Reproduce the figures
with ``python -m bench.content_check``. Pure numpy and PIL: runs in the decode workers, on the image already decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from predictd.models.preprocess import crop_to_content

ANALYSIS_SIDE = 256
MIN_SPREAD = 0.05
"""Below this grey-level range (p1 to p99, of [0, 1]) the image is blank: training images start at 0.35."""
MIN_SMOOTHNESS = 0.75
"""Below this neighbour correlation the image is noise or text: training images start at 0.92."""
MIN_SHARPNESS = 0.04
"""Below this the image has no edge anywhere (its sharpest steps are under 4% of its grey range): radiographs start at
0.072."""


@dataclass(frozen=True)
class ContentStats:
    spread: float
    smoothness: float
    sharpness: float

    @property
    def problem(self) -> str | None:
        """Why these pixels hold no radiograph, in words for a report (no value from the image's header); None if
        they may."""
        if self.spread < MIN_SPREAD:
            return f"the image is blank (grey-level range {self.spread:.2f} < {MIN_SPREAD})"
        if self.smoothness < MIN_SMOOTHNESS:
            return (
                f"the image has no radiograph's structure: noise or text (neighbour correlation "
                f"{self.smoothness:.2f} < {MIN_SMOOTHNESS})"
            )
        if self.sharpness < MIN_SHARPNESS:
            return (
                f"the image has no edge anywhere: a smooth pattern, not a radiograph (sharpness "
                f"{self.sharpness:.3f} < {MIN_SHARPNESS})"
            )
        return None


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    denominator = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / denominator if denominator > 0 else 1.0  # flat: no noise (the spread catches it)


def content_stats(gray: np.ndarray, *, cropped: bool = False) -> ContentStats:
    """Spread, smoothness and sharpness of a ``to_gray`` image (float in [0, 1]), measured on its content at 256 px.

    ``cropped``: ``gray`` is its content box already (the decode workers have it: finding it again costs 18 ms of
    the 25 on a 2.5 Mpx CR)."""
    content = gray if cropped else crop_to_content(gray)
    h, w = content.shape
    scale = ANALYSIS_SIDE / max(h, w)
    size = (max(2, round(w * scale)), max(2, round(h * scale)))
    small = np.asarray(
        Image.fromarray(np.ascontiguousarray(content, dtype=np.float32), mode="F").resize(
            size, Image.Resampling.BILINEAR
        ),
        dtype=np.float64,
    )
    low, high = np.percentile(small, [1.0, 99.0])
    spread = float(high - low)
    smoothness = min(_correlation(small[:, :-1], small[:, 1:]), _correlation(small[:-1], small[1:]))
    steps = np.concatenate([np.abs(np.diff(small, axis=1)).ravel(), np.abs(np.diff(small, axis=0)).ravel()])
    sharpness = float(np.percentile(steps, 99.9)) / spread if spread > 0 else 0.0
    return ContentStats(spread=spread, smoothness=smoothness, sharpness=sharpness)


def content_problem(gray: np.ndarray, *, cropped: bool = False) -> str | None:
    """Why ``gray`` is no radiograph at all (blank, noise, text, a smooth pattern), or None; see the module."""
    return content_stats(gray, cropped=cropped).problem
