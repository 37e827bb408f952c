"""Batched, seeded training augmentation on network inputs: what real CR/DX has and web JPEGs lack.

Geometry: rotation, zoom, shear, shift, optional horizontal flip, and a random aspect ratio: the content squashed
along one axis (up to ``stretch``), never cut. Intensity: contrast, brightness, a wide gamma (raw detector data is far
from display gamma), noise and coarse quantisation. Clutter: burnt-in markers and text (L/R, AP, a ruler), shallow
collimation edges, and uniform bars of either polarity that the content crop did not remove (a bar carrying a
letter, say). The model must learn that none of these is hardware.

What this does not do by default, measured: *reframing* (a window of another aspect ratio cut from the image,
``reframe``) made portrait single-hip CRs look like the training images of a whole-pelvis hip model, which then
answered THA at 0.96 on the WG04 RG2 hip without one: a window of a pelvis labelled THA may show only the other hip.
A label that belongs to the whole image needs the whole image; collimation is shallow for the same reason.

It works on whole batches of already-preprocessed tensors (one ``affine_grid`` + ``grid_sample`` per batch), so the
images are decoded once per run, not once per epoch, and the same code runs on CPU and GPU. Intensity changes are
made in [0, 1] gray, before normalisation, and the warp pads with black: what the inference padding shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from predictd.models.card import Preprocessing

MARKER_TEXTS = ("L", "R", "AP", "PA", "LAT", "SUPINE", "ERECT", "WB", "12", "3", "PORTABLE")


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random changes; each image draws its own values uniformly (zoom log-uniformly)."""

    rotation_degrees: float = 15.0
    zoom: tuple[float, float] = (0.85, 1.2)
    """> 1 zooms in."""
    shear: float = 0.1
    translate: float = 0.08
    """Fraction of the image side, each axis."""
    contrast: tuple[float, float] = (0.7, 1.4)
    brightness: float = 0.1
    gamma: tuple[float, float] = (0.6, 1.7)
    hflip: bool = True
    """Only where laterality allows: a bilateral card's half keeps its side, so its trainer turns this off."""
    stretch: float = 1.25
    """Largest squash of the content along one axis (a random aspect ratio that keeps all of the image)."""
    reframe: float = 0.0
    """Chance of a window of random aspect ratio (``aspect``, width/height) cut from the content and fitted into the
    square with black bars. Off: see the module docstring (only for labels that any part of the image carries)."""
    aspect: tuple[float, float] = (0.6, 1.7)
    bars: float = 0.2
    """Chance of a uniform bar (black, white or gray) along one or two edges."""
    bar_width: tuple[float, float] = (0.02, 0.15)
    markers: float = 0.4
    """Chance of one to three burnt-in markers or a ruler."""
    collimation: float = 0.25
    """Chance of a collimated edge: a bright or dark region beyond a nearly straight line, 3-12% deep."""
    noise: float = 0.03
    """Largest standard deviation of the added Gaussian noise (each image draws its own from 0 to this)."""
    quantise: float = 0.2
    """Chance of coarse quantisation (6 to 8 bits), as an 8-bit export of a 12-bit image shows."""


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _chance(p: float, gen: torch.Generator) -> bool:
    return bool(torch.rand(1, generator=gen).item() < p)


def _pick(low: float, high: float, gen: torch.Generator) -> float:
    return float(_uniform(1, low, high, gen).item())


def _intensity(gray: torch.Tensor, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    n = gray.shape[0]
    contrast = _uniform(n, *aug.contrast, gen).view(n, 1, 1, 1).to(gray)
    brightness = _uniform(n, -aug.brightness, aug.brightness, gen).view(n, 1, 1, 1).to(gray)
    gamma = torch.exp(_uniform(n, math.log(aug.gamma[0]), math.log(aug.gamma[1]), gen)).view(n, 1, 1, 1).to(gray)
    background = gray <= 0.0  # the resize padding stays black, as inference pads
    out = ((gray - 0.5) * contrast + 0.5 + brightness).clamp(0.0, 1.0) ** gamma
    return out.masked_fill(background, 0.0)


def _geometry(gray: torch.Tensor, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    """One grid_sample: reframing window (output → window) composed with the affine (window → input)."""
    n, _, h, w = gray.shape
    angle = _uniform(n, -aug.rotation_degrees, aug.rotation_degrees, gen) * (math.pi / 180.0)
    zoom = torch.exp(_uniform(n, math.log(aug.zoom[0]), math.log(aug.zoom[1]), gen))
    shear = _uniform(n, -aug.shear, aug.shear, gen)
    shift = _uniform(2 * n, -2 * aug.translate, 2 * aug.translate, gen).view(n, 2)  # grid coordinates span 2
    flip = torch.ones(n)
    if aug.hflip:
        flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # window → input coordinates: rotate · shear · (flip, 1) / zoom, then shift
    a = torch.stack(
        [torch.stack([cos * flip, cos * shear - sin], 1), torch.stack([sin * flip, sin * shear + cos], 1)], 1
    ) / zoom.view(n, 1, 1)

    # The window, in [-1, 1] coordinates: the content box (what is not resize padding), or the largest box of a
    # random aspect ratio inside it, at a random place. Its long side fills the output.
    box_c, box_half = _content_boxes(gray)
    ratio = torch.exp(_uniform(n, math.log(aug.aspect[0]), math.log(aug.aspect[1]), gen)) * (h / w)
    framed = torch.rand(n, generator=gen) < aug.reframe
    wide = ratio * box_half[:, 1] >= box_half[:, 0]  # the window is limited by the box's width
    half_w = torch.where(wide, box_half[:, 0], ratio * box_half[:, 1])
    half_h = torch.where(wide, box_half[:, 0] / ratio, box_half[:, 1])
    half_w = torch.where(framed, half_w, box_half[:, 0])
    half_h = torch.where(framed, half_h, box_half[:, 1])
    slack = torch.stack([box_half[:, 0] - half_w, box_half[:, 1] - half_h], 1)
    centre = box_c + (torch.rand(n, 2, generator=gen) * 2 - 1) * slack
    span = torch.maximum(half_w, half_h).view(n, 1, 1, 1)

    centres_y, centres_x = (torch.arange(h) * 2 + 1) / h - 1, (torch.arange(w) * 2 + 1) / w - 1  # align_corners=False
    ys, xs = torch.meshgrid(centres_y, centres_x, indexing="ij")
    out_xy = torch.stack([xs, ys], -1).unsqueeze(0)  # (1, H, W, 2)
    window_xy = out_xy * span + centre.view(n, 1, 1, 2)
    inside = ((window_xy[..., 0] - centre[:, 0:1, None]).abs() <= half_w.view(n, 1, 1)) & (
        (window_xy[..., 1] - centre[:, 1:2, None]).abs() <= half_h.view(n, 1, 1)
    )
    # Random aspect ratio: the window's coordinates stretched along one axis, so the content is squashed, never cut.
    squash = torch.exp(_uniform(n, 0.0, math.log(aug.stretch), gen))
    along_x = torch.rand(n, generator=gen) < 0.5
    factors = torch.stack([torch.where(along_x, squash, 1.0), torch.where(along_x, 1.0, squash)], 1).view(n, 1, 1, 2)
    window_xy = centre.view(n, 1, 1, 2) + (window_xy - centre.view(n, 1, 1, 2)) * factors
    grid = torch.einsum("nij,nhwj->nhwi", a, window_xy) + shift.view(n, 1, 1, 2)
    warped = F.grid_sample(gray, grid.to(gray), mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped * inside.unsqueeze(1).to(gray)


def _content_boxes(gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the centre (x, y) and half sizes (x, y) of what is not exact-zero resize padding, in grid units."""
    n, _, h, w = gray.shape
    lit = gray[:, 0] > 0
    centres, halves = torch.zeros(n, 2), torch.ones(n, 2)
    for i in range(n):
        rows = torch.nonzero(lit[i].any(dim=1)).flatten()
        cols = torch.nonzero(lit[i].any(dim=0)).flatten()
        if rows.numel() == 0 or cols.numel() == 0:
            continue
        x0, x1 = 2 * cols[0].item() / w - 1, 2 * (cols[-1].item() + 1) / w - 1
        y0, y1 = 2 * rows[0].item() / h - 1, 2 * (rows[-1].item() + 1) / h - 1
        centres[i] = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2])
        halves[i] = torch.tensor([(x1 - x0) / 2, (y1 - y0) / 2])
    return centres, halves


@lru_cache(maxsize=1)
def _glyphs() -> tuple[torch.Tensor, ...]:
    """Masks (float in [0, 1]) of the marker texts and a ruler, drawn once with PIL's built-in font."""
    font = ImageFont.load_default(size=40)
    masks = []
    for text in MARKER_TEXTS:
        left, top, right, bottom = font.getbbox(text)
        img = Image.new("L", (int(right - left) + 8, int(bottom - top) + 8), 0)
        ImageDraw.Draw(img).text((4 - left, 4 - top), text, fill=255, font=font)
        masks.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0))
    ruler = Image.new("L", (400, 40), 0)
    draw = ImageDraw.Draw(ruler)
    draw.line([(0, 4), (399, 4)], fill=255, width=4)
    for i in range(0, 400, 20):
        draw.line([(i, 4), (i, 36 if i % 100 == 0 else 20)], fill=255, width=3)
    masks.append(torch.from_numpy(np.asarray(ruler, dtype=np.float32) / 255.0))
    return tuple(masks)


def _paste_marker(img: torch.Tensor, gen: torch.Generator) -> None:
    """One marker into ``img`` (H, W) in place: bright or dark letters, sometimes on a box of the other polarity."""
    h, w = img.shape
    glyphs = _glyphs()
    mask = glyphs[int(torch.randint(len(glyphs), (1,), generator=gen))]
    scale = _pick(0.05, 0.14, gen) * h / mask.shape[0]
    if mask.shape[1] * scale > 0.9 * w:  # a long ruler on a small image
        scale = 0.9 * w / mask.shape[1]
    size = (max(2, round(mask.shape[0] * scale)), max(2, round(mask.shape[1] * scale)))
    m = F.interpolate(mask[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].to(img)
    if _chance(0.3, gen):
        m = m.T if m.shape[1] <= h and m.shape[0] <= w else m  # a ruler or label running down the side
    mh, mw = min(m.shape[0], h), min(m.shape[1], w)
    m = m[:mh, :mw]
    y = int(torch.randint(0, h - mh + 1, (1,), generator=gen))
    x = int(torch.randint(0, w - mw + 1, (1,), generator=gen))
    value = 1.0 if _chance(0.75, gen) else 0.0
    patch = img[y : y + mh, x : x + mw]
    if _chance(0.25, gen):
        patch.fill_(1.0 - value)
    patch.mul_(1 - m).add_(value * m)


def _collimate(img: torch.Tensor, gen: torch.Generator) -> None:
    """A collimated border in place: beyond a nearly straight line near one edge, bright or dark with some noise."""
    h, w = img.shape
    edge = int(torch.randint(4, (1,), generator=gen))
    depth = _pick(0.03, 0.12, gen)
    tilt = math.tan(_pick(-5.0, 5.0, gen) * math.pi / 180.0)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    along, across = (xs, ys) if edge in (0, 1) else (ys, xs)
    if edge in (1, 3):
        across = 1 - across
    mask = across < depth + tilt * (along - 0.5)
    level = _pick(0.8, 1.0, gen) if _chance(0.6, gen) else _pick(0.0, 0.15, gen)
    noise = torch.randn(int(mask.sum()), generator=gen) * 0.02
    img[mask.to(img.device)] = (level + noise).clamp(0.0, 1.0).to(img)


def _bar(img: torch.Tensor, aug: Augmentation, gen: torch.Generator) -> None:
    """Uniform bars along one or two opposite edges, in place: padding that the content crop could not remove."""
    h, w = img.shape
    value = (0.0, 1.0, _pick(0.2, 0.8, gen))[int(torch.randint(3, (1,), generator=gen))]
    width = _pick(*aug.bar_width, gen)
    both = _chance(0.5, gen)
    if _chance(0.5, gen):  # left/right (pillarbox)
        k = max(1, round(width * w))
        img[:, :k] = value
        if both:
            img[:, w - k :] = value
    else:
        k = max(1, round(width * h))
        img[:k, :] = value
        if both:
            img[h - k :, :] = value


def _clutter(gray: torch.Tensor, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    out = gray.clone()
    for i in range(out.shape[0]):
        img = out[i, 0]
        if _chance(aug.collimation, gen):
            _collimate(img, gen)
        if _chance(aug.bars, gen):
            _bar(img, aug, gen)
        if _chance(aug.markers, gen):
            for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
                _paste_marker(img, gen)
    if out.shape[1] > 1:  # every channel shows the same gray
        out[:, 1:] = out[:, :1]
    return out


def _noise(gray: torch.Tensor, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    n = gray.shape[0]
    sigma = _uniform(n, 0.0, aug.noise, gen).view(n, 1, 1, 1).to(gray)
    noise = torch.randn(gray.shape[0], 1, *gray.shape[2:], generator=gen).to(gray)
    out = (gray + sigma * noise).clamp(0.0, 1.0)
    levels = torch.pow(2.0, torch.randint(6, 9, (n,), generator=gen).float()).view(n, 1, 1, 1).to(gray)
    coarse = torch.rand(n, generator=gen).view(n, 1, 1, 1).to(gray.device) < aug.quantise
    return torch.where(coarse, torch.round(out * (levels - 1)) / (levels - 1), out)


def augment(x: torch.Tensor, prep: Preprocessing, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    """A randomly changed copy of the normalised batch ``x`` (N, C, H, W); random draws come from ``gen`` (CPU)."""
    gray = (x * prep.std + prep.mean).clamp(0.0, 1.0)
    gray = _intensity(gray, aug, gen)
    gray = _geometry(gray, aug, gen)
    gray = _clutter(gray, aug, gen)
    gray = _noise(gray, aug, gen)
    return (gray - prep.mean) / prep.std
