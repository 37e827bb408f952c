"""Grad-CAM of the engine's resident models on DICOM images: heat maps, and the overlay a key image carries.

Kept apart from models.inference (the resident models, the batched forward, the gate), which needs no gradients,
and from models.explain (Grad-CAM maths and overlays on plain tensors and arrays), which knows nothing of cards or
DICOM: this module maps a dataset, or a prediction, onto exactly what the model read (window, content crop,
bilateral half) and the heat map back onto the image.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from PIL import Image

from predictd.models.cascade_run import HALVES
from predictd.models.decode_pool import framed
from predictd.models.ensemble import members_of
from predictd.models.explain import gradcam, overlay_rgb, unpad
from predictd.models.prediction import Prediction
from predictd.models.preprocess import gray_to_input, split_bilateral, to_gray

if TYPE_CHECKING:
    from predictd.models.inference import Engine
    from predictd.models.loading import Resident

__all__ = ["explain", "explain_prediction"]


def explain(engine: Engine, ds: pydicom.Dataset, card_name: str, label_key: str | None = None) -> np.ndarray:
    """Grad-CAM heat map (float32 in [0, 1]) of one resident model for one dataset, in the geometry of the image.

    The map is for ``label_key``, or for the model's top class when None. It is computed on the padded
    square input and mapped back (padding cropped, resized), so it lies on ``to_gray(ds)`` pixel for pixel:
    ``overlay_png(to_gray(ds), explain(engine, ds, name), path)``. KeyError for a model that is not resident or a
    label the card does not have.
    """
    resident = engine.resident(card_name)
    gray = to_gray(ds, resident.card.preprocessing.window)
    return _heat(engine, resident, gray, _class_index(engine, resident, gray, label_key))


def explain_prediction(
    engine: Engine,
    ds: pydicom.Dataset,
    prediction: Prediction,
    *,
    alpha: float = 0.4,
    max_side: int | None = 1024,
) -> np.ndarray:
    """RGB uint8 (rows, cols, 3): the image ``prediction`` was made from, with the Grad-CAM behind it overlaid.

    For a key image a person can look at. The map is for the prediction's label (the top class when it is
    indeterminate) and is computed on exactly what the model read: the whole image, or, for a bilateral
    model's prediction, the half named by ``prediction.region``, placed back into that half of the whole
    image (the other half shows no heat). ``max_side`` caps the longer side (None keeps the image size): the
    overlay shows where the evidence lies, not fine detail, and a full-size RGB radiograph is ~11 MB. The image and
    the map are shrunk first and coloured and blended at the output size (bench/key_images.py: the blend at full
    size was a third of the time). An indeterminate prediction's map is for its most probable class, read from the
    prediction rather than from another forward pass.
    Raises ValueError when ``ds`` is not the prediction's image or the resident model is another version.
    """
    if str(ds.get("SOPInstanceUID", "")) != prediction.sop_instance_uid:
        raise ValueError("the dataset is not the image the prediction was made from")
    resident = engine.resident(prediction.model_name)
    card = resident.card
    if card.version != prediction.model_version:
        raise ValueError(
            f"model {card.name} is resident as version {card.version}, the prediction came from "
            f"{prediction.model_version}: its Grad-CAM would explain another model"
        )
    label = prediction.label if prediction.is_decided else _most_probable(prediction)
    gray = to_gray(ds, card.preprocessing.window)
    if prediction.region in HALVES:
        half = HALVES.index(str(prediction.region))
        box = framed(gray, card.preprocessing)
        base = gray[box]
        part = split_bilateral(base, ds)[half][1]
        width = base.shape[1]
        columns = slice(0, width // 2) if half == 0 else slice((width + 1) // 2, width)
        heat = np.zeros(gray.shape, dtype=np.float32)
        heat[box][:, columns] = _heat(engine, resident, part, _class_index(engine, resident, part, label))
    else:
        heat = _heat(engine, resident, gray, _class_index(engine, resident, gray, label))
    rows, cols = gray.shape
    if max_side is not None and max(rows, cols) > max_side:
        scale = max_side / max(rows, cols)
        size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
        gray, heat = (_shrunk(a, size, Image.Resampling.LANCZOS) for a in (gray, heat))
    return overlay_rgb(gray, heat, alpha)


def _shrunk(values: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """A float image resized to ``size`` (width, height), kept in [0, 1] (Lanczos rings a little past the ends)."""
    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32), mode="F").resize(size, resample)
    return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)


def _most_probable(prediction: Prediction) -> str | None:
    """The class an indeterminate prediction leaned to (its top probability); None when it carries none."""
    if not prediction.probabilities:
        return None
    return max(prediction.probabilities, key=lambda key: prediction.probabilities[key])


def _class_index(engine: Engine, resident: Resident, gray: np.ndarray, label_key: str | None) -> int:
    """Index of ``label_key`` in the card, or of the class predict would report for ``gray`` when None."""
    card = resident.card
    if label_key is None:  # same forward, same autocast as predict
        batch = gray_to_input(gray, card.preprocessing)[np.newaxis]
        return int(np.argmax(engine.forward_only(batch, card.name)[0]))
    try:
        return card.label_keys.index(label_key)
    except ValueError:
        raise KeyError(f"model {card.name} has no label {label_key!r} (labels: {card.label_keys})") from None


def _heat(engine: Engine, resident: Resident, gray: np.ndarray, index: int) -> np.ndarray:
    """Grad-CAM of class ``index`` for one gray image, mapped back onto that image's geometry.

    The model read the content box only (when its card crops), so the map covers that box; the cropped borders
    get no heat: framing is not evidence.
    """
    prep = resident.card.preprocessing
    box = framed(gray, prep)
    part = gray[box]
    batch = gray_to_input(part, replace(prep, crop_content=False))[np.newaxis]  # part is already the box
    x = engine.eager_input(batch)
    heat = np.zeros(gray.shape, dtype=np.float32)
    # eager, float32 (gradients need no autocast); an ensemble's map is the mean of its members' maps
    maps = [gradcam(member, x, index) for member in members_of(resident.model)]
    heat[box] = unpad(np.mean(maps, axis=0).astype(np.float32), part.shape)
    return heat
