"""DICOM dataset → model input array. Pure functions, called identically by training and inference.

The pipeline follows the DICOM grayscale display chain so that the network sees what a radiologist sees:
decode → (colour → luminance) → Modality LUT → VOI (first window, or min-max) → MONOCHROME1 inverted
(bone bright) → crop to the content (uniform borders and padding removed) → aspect-preserving resize and centred
zero pad → (x - mean) / std, repeated to the channels.
The card saved next to the weights carries the parameters (:class:`~models.card.Preprocessing`), so a model
is always fed the way it was trained.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from predictd.models.card import Preprocessing
from predictd.models.decoders import decode_pixels
from predictd.models.phi import exception_text

WINDOWS = ("first", "minmax")
"""Accepted values of ``Preprocessing.window``."""

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_LOW_PCT, _HIGH_PCT = 0.5, 99.5
"""Robust min-max: a few hot or dead pixels (burnt-in markers, collimator edges) must not set the contrast."""


class PixelDecodeError(ValueError):
    """Pixels missing or undecodable (unsupported transfer syntax, missing plugin, corrupt data)."""


def transfer_syntax(ds: pydicom.Dataset) -> str:
    """'UID (name)' of the dataset's transfer syntax, for error messages an operator can act on."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None:
        return "unknown transfer syntax"
    return f"{uid} ({uid.name})"


def _decode(ds: pydicom.Dataset) -> np.ndarray:
    """The first frame, decoded by :func:`decode_pixels`; every failure becomes a PixelDecodeError naming the syntax."""
    if not any(kw in ds for kw in _PIXEL_KEYWORDS):
        raise PixelDecodeError(f"no pixel data (transfer syntax {transfer_syntax(ds)})")
    try:
        arr = decode_pixels(ds)  # the fastest plugin installed for the syntax, else pydicom's choice
    except Exception as exc:  # RuntimeError, NotImplementedError, ValueError, whatever a plugin raises
        # pydicom's message names a missing plugin ("... plugins are missing dependencies: ..."): keep it.
        detail = exception_text(exc, limit=300)
        raise PixelDecodeError(
            f"cannot decode pixel data with transfer syntax {transfer_syntax(ds)}: {detail}"
        ) from exc
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        arr = arr[0]
    if arr.ndim != (3 if samples > 1 else 2):
        shape = f"{arr.shape} ({samples} samples, {frames} frames)"
        raise PixelDecodeError(f"unexpected pixel array shape {shape} with {transfer_syntax(ds)}")
    return arr


def _padding_mask(raw: np.ndarray, ds: pydicom.Dataset) -> np.ndarray | None:
    """Pixels equal to PixelPaddingValue (or in PixelPaddingRangeLimit): outside the image, not anatomy."""
    value = ds.get("PixelPaddingValue")
    if value is None or raw.ndim != 2 or not np.issubdtype(raw.dtype, np.integer):
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    if limit is None:
        mask = raw == int(value)
    else:
        lo, hi = sorted((int(value), int(limit)))
        mask = (raw >= lo) & (raw <= hi)
    if not mask.any() or mask.all():
        return None
    return np.asarray(mask)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma: the gray a colour radiograph (secondary capture, photo of a film) would have."""
    weights = np.array([0.299, 0.587, 0.114])
    return np.asarray(rgb[..., :3].astype(np.float64) @ weights)


def _minmax(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Robust percentile stretch to [0, 1], ignoring padding pixels."""
    sample = values[~mask] if mask is not None else values
    lo, hi = np.percentile(sample, [_LOW_PCT, _HIGH_PCT]) if sample.size else (0.0, 0.0)
    if not hi > lo:  # flat image: nothing to see, return black rather than divide by zero
        return np.zeros(values.shape, dtype=np.float64)
    return np.asarray((values - lo) / (hi - lo))


def _valid_voi_lut(ds: pydicom.Dataset) -> bool:
    seq = ds.get("VOILUTSequence")
    return bool(seq) and None not in (seq[0].get("LUTDescriptor"), seq[0].get("LUTData"))


def _windowing_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """Output range of pydicom's ``apply_windowing``: it maps the window onto the stored/rescaled range."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        y_min, y_max = 0.0, float(2**bits - 1)
    else:
        y_min, y_max = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        y_min, y_max = y_min * float(slope) + float(intercept), y_max * float(slope) + float(intercept)
    return y_min, y_max


def _first(value: Any) -> float:
    return float(value[0] if isinstance(value, list | tuple | pydicom.multival.MultiValue) else value)


def _linear_window(values: np.ndarray, ds: pydicom.Dataset) -> np.ndarray | None:
    """The first window of a LINEAR or LINEAR_EXACT VOI function (PS3.3 C.11.2.1.2.1, C.11.2.1.3.2) straight onto
    [0, 1] in float32; None for SIGMOID (pydicom computes it) or a window the standard does not allow.

    Why not pydicom's ``apply_windowing``: it maps onto the stored range in float64 with three boolean-mask passes,
    and ``to_gray`` of a 3.8 Mpx CR took 34 ms with it against 10 ms with this, the same values to one float32 ulp
    (6e-8); the daemon does it for every image (``python -m bench.windowing``).
    """
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT"):
        return None
    center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    if function == "LINEAR":
        if width < 1:
            return None
        center, width = center - 0.5, width - 1
    elif width <= 0:
        return None
    x = values.astype(np.float32, copy=False)
    if width == 0:  # LINEAR with width 1: a threshold at the centre
        return np.asarray(x > center, dtype=np.float32)
    return np.clip((x - np.float32(center)) / np.float32(width) + np.float32(0.5), 0.0, 1.0)


def _first_voi(values: np.ndarray, ds: pydicom.Dataset) -> np.ndarray | None:
    """The file's first VOI (LUT preferred, as in pydicom) scaled to [0, 1]; None when there is none."""
    has_lut = _valid_voi_lut(ds)
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if not (has_lut or has_window):
        return None
    try:
        if not has_lut:
            linear = _linear_window(values, ds)
            if linear is not None:
                return linear
        out = apply_voi_lut(values, ds, index=0).astype(np.float64)
        if has_lut:
            # Scale by the LUT's actual entries: vendors often declare 16 bits but fill only 12.
            lut = _lut_entries(ds).astype(np.float64)
            lo, hi = float(lut.min()), float(lut.max())
        else:
            lo, hi = _windowing_range(ds)
    except Exception:  # a malformed window (width < 1, bad LUT) must not lose the image: use min-max
        return None
    if not hi > lo:
        return None
    return np.asarray((out - lo) / (hi - lo))


def _lut_entries(ds: pydicom.Dataset) -> np.ndarray:
    """The first VOI LUT's output values, whatever their encoding (US list or OW bytes)."""
    item = ds.VOILUTSequence[0]
    data: Any = item.LUTData
    if isinstance(data, bytes | bytearray):
        return np.frombuffer(data, dtype="<u2" if int(item.LUTDescriptor[2]) > 8 else "u1")
    return np.atleast_1d(np.asarray(data))


def to_gray(ds: pydicom.Dataset, window: str = "first") -> np.ndarray:
    """Decoded first frame as float32 2-D in [0, 1] with bone bright.

    ``window="first"`` uses the file's first VOI (window or VOI LUT) when present, because that is how the
    modality meant the image to be read; else, and always for ``"minmax"``, a robust percentile stretch.
    """
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {WINDOWS}, not {window!r}")
    raw = _decode(ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if raw.ndim == 2 and photometric == "PALETTE COLOR":
        raw = apply_color_lut(raw, ds)
    if raw.ndim == 3:  # colour: no modality/VOI LUT applies to RGB
        mask = None
        gray = _minmax(_luminance(raw), None)
    else:
        mask = _padding_mask(raw, ds)
        values = np.asarray(apply_modality_lut(raw, ds))
        voi = _first_voi(values, ds) if window == "first" else None
        gray = voi if voi is not None else _minmax(values.astype(np.float64), mask)
        if photometric == "MONOCHROME1":
            gray = 1.0 - gray
    gray = np.clip(gray, 0.0, 1.0)
    if mask is not None:
        gray[mask] = 0.0
    return gray.astype(np.float32)


FLAT_TOLERANCE = 0.04
"""A border row or column is padding when its 2nd-98th percentile range is within this (gray in [0, 1]): JPEG
ringing in a black bar and a small burnt-in letter (under 2% of the line) do not make a bar look like anatomy."""
_CROP_ANALYSIS_SIDE = 512


def _flat_lines(small: np.ndarray, axis: int) -> np.ndarray:
    low, high = np.percentile(small, [2.0, 98.0], axis=axis)
    return np.asarray(high - low <= FLAT_TOLERANCE)


def _span(flat: np.ndarray) -> tuple[int, int]:
    """First and one-past-last index that is not flat; (0, len) when every line is flat (nothing to crop to)."""
    kept = np.flatnonzero(~flat)
    if kept.size == 0:
        return 0, len(flat)
    return int(kept[0]), int(kept[-1]) + 1


_CROP_PASSES = 4
"""Frames inside frames are cropped one per pass: rows flat only once the columns around them are gone."""


def content_box(gray: np.ndarray) -> tuple[slice, slice]:
    """(rows, columns) of ``gray`` without its uniform borders: black or white letterbox bars, PixelPaddingValue
    (already 0 after :func:`to_gray`), constant rows and columns at the edges.

    Why: a portrait CR padded to a square and a web JPEG cropped tight must reach the model alike, so that framing
    cannot drive a prediction. Only leading and trailing lines are removed, never lines inside the image. The
    analysis runs on a block-averaged copy (long side ≤ 512) so it costs a few ms on a 3000 px radiograph: each edge
    is found to within one block (6 px on a 3000 px image). An image that is flat everywhere (blank) is
    returned whole: there is nothing to crop to, and the domain gate refuses it.
    """
    if gray.ndim != 2 or 0 in gray.shape:
        raise ValueError(f"expected a non-empty 2-D image, got shape {gray.shape}")
    h, w = gray.shape
    f = max(1, -(-max(h, w) // _CROP_ANALYSIS_SIDE))
    hb, wb = -(-h // f), -(-w // f)
    padded = np.pad(gray, ((0, hb * f - h), (0, wb * f - w)), mode="edge")
    # rows of blocks first, then columns: contiguous reductions, 3x faster than mean(axis=(1, 3)) at 3.8 Mpx
    small = padded.reshape(hb, f, wb * f).mean(axis=1).reshape(hb, wb, f).mean(axis=2)
    top, bottom, left, right = 0, hb, 0, wb
    for _ in range(_CROP_PASSES):  # nested frames: a white square pad around a black side strip
        part = small[top:bottom, left:right]
        t, b = _span(_flat_lines(part, axis=1))
        lo, r = _span(_flat_lines(part, axis=0))
        if (t, b, lo, r) == (0, part.shape[0], 0, part.shape[1]):
            break
        top, bottom, left, right = top + t, top + b, left + lo, left + r
    rows, cols = (top * f, min(h, bottom * f)), (left * f, min(w, right * f))
    if f > 1:  # each edge lies inside its boundary block: find it at full resolution
        rows = _refined(gray, rows, cols, f, axis=0)
        cols = _refined(gray, cols, rows, f, axis=1)
    return slice(*rows), slice(*cols)


def _refined(gray: np.ndarray, span: tuple[int, int], across: tuple[int, int], f: int, axis: int) -> tuple[int, int]:
    """``span`` (start, stop) of rows (axis 0) or columns (axis 1) moved to the first and last line that is not flat
    within one block of each end. Why: a bar left one block wide is a black line beside the model's gray padding, and
    a network trained on a hundred images answered that line by 0.23."""
    start, stop = span
    if stop - start <= 2 * f:
        return span
    lines = gray[start:stop, across[0] : across[1]] if axis == 0 else gray[across[0] : across[1], start:stop].T
    step = max(1, lines.shape[1] // 1024)  # a subsample of each line is plenty for its percentiles
    head, tail = lines[:f, ::step], lines[-f:, ::step]
    first = np.flatnonzero(~_flat_lines(head, axis=1))
    last = np.flatnonzero(~_flat_lines(tail, axis=1))
    new_start = start + int(first[0]) if first.size else start
    new_stop = stop - f + int(last[-1]) + 1 if last.size else stop
    return new_start, new_stop


def crop_to_content(gray: np.ndarray) -> np.ndarray:
    """``gray`` cut to its :func:`content_box` (a view, not a copy)."""
    rows, cols = content_box(gray)
    return gray[rows, cols]


def resize_pad(img: np.ndarray, size: int) -> np.ndarray:
    """Resize keeping the aspect ratio (long side == ``size``), centred on a ``size``×``size`` zero canvas.

    Squashing a 2:1 image to a square would distort the anatomy the model learns; padding keeps it.
    PIL's bilinear filter widens its support when shrinking, so large radiographs are anti-aliased.
    """
    if img.ndim != 2 or 0 in img.shape:
        raise ValueError(f"expected a non-empty 2-D image, got shape {img.shape}")
    if size < 1:
        raise ValueError(f"size must be positive, not {size}")
    h, w = img.shape
    scale = size / max(h, w)
    new_h, new_w = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    resized = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32), mode="F").resize(
        (new_w, new_h), resample=Image.Resampling.BILINEAR
    )
    out = np.zeros((size, size), dtype=np.float32)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = np.asarray(resized, dtype=np.float32)
    return out


def gray_to_input(gray: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """A ``to_gray`` image → float32 (in_chans, size, size) input; one decode can feed many models.

    Cropped to its content first when the card says so (``crop_content``; cards trained before it read the frame).
    """
    if prep.crop_content:
        gray = crop_to_content(gray)
    x = (resize_pad(gray, prep.input_size) - np.float32(prep.mean)) / np.float32(prep.std)
    return np.repeat(x[np.newaxis], prep.in_chans, axis=0).astype(np.float32, copy=False)


def preprocess(ds: pydicom.Dataset, prep: Preprocessing) -> np.ndarray:
    """Dataset → float32 (in_chans, size, size) network input, exactly as the card says."""
    return gray_to_input(to_gray(ds, prep.window), prep)


_SIDES = {"R": "R", "L": "L"}


def _first_letter(value: Any) -> str:
    return str(value).strip().upper()[:1]


def image_left_side(ds: pydicom.Dataset) -> str | None:
    """The patient side ("R" or "L") shown at the image's left edge (column 0), or None when it cannot be known.

    1. PatientOrientation: its first value is the patient direction of the row axis (columns increasing), most
       significant letter first. "L" means the rows run toward the patient's left, so column 0 is the patient's
       right → "R"; "R" → "L". A first value of H/F/A/P (rotated or lateral image) → None: a vertical midline
       does not separate the two sides then.
    2. Without PatientOrientation, ViewPosition "AP" → "R": for an AP projection the detector image and the
       standard radiographic display agree (patient facing the viewer, right side on the viewer's left).
       "PA" → None on purpose: the unflipped detector image has the patient's left on the image's left, but
       modalities usually flip PA images to the standard display; without PatientOrientation we cannot tell which.
    3. Anything else → None.
    """
    orientation = ds.get("PatientOrientation")
    if orientation:
        values = [orientation] if isinstance(orientation, str) else list(orientation)
        row_direction = _first_letter(values[0]) if values else ""
        if row_direction in ("L", "R"):
            return "R" if row_direction == "L" else "L"
        if row_direction:
            return None
    if str(ds.get("ViewPosition", "")).strip().upper() == "AP":
        return "R"
    return None


def split_bilateral(gray: np.ndarray, ds: pydicom.Dataset) -> list[tuple[str | None, np.ndarray]]:
    """Split a bilateral image (AP pelvis) at the midline column into two halves, each classified on its own.

    Returns ``[(side, image-left half), (side, image-right half)]``, sides from :func:`image_left_side`: the
    image-left half is that side, the other half the opposite one. When the orientation is unknown both sides are
    None: the halves are still returned and the result must then say "laterality unknown", never guess a side.
    For an odd width the middle column is dropped, so both halves have the same shape. The halves are copies.
    """
    if gray.ndim != 2 or gray.shape[1] < 2:
        raise ValueError(f"expected a 2-D image at least 2 columns wide, got shape {gray.shape}")
    width = gray.shape[1]
    left = np.ascontiguousarray(gray[:, : width // 2])
    right = np.ascontiguousarray(gray[:, (width + 1) // 2 :])
    side = image_left_side(ds)
    if side is None:
        return [(None, left), (None, right)]
    other = "L" if side == "R" else "R"
    return [(side, left), (other, right)]


def laterality_of(ds: pydicom.Dataset) -> str | None:
    """Side of a single (unsplit) image: ImageLaterality, else the series' Laterality; "R"/"L", else None.

    An image-level value wins over the series-level one, even "B" (both) or "U" (unpaired): those, and missing
    or empty values, give None: there is no one side to report.
    """
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword) or "").strip().upper()
        if value:
            return _SIDES.get(value)
    return None
