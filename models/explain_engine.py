"""Grad-CAM of the engine's resident models on DICOM images: heat maps, and the overlay a key image carries.

Kept apart from models.inference (the resident models, the batched forward, the gate), which needs no gradients,
and from models.explain (Grad-CAM maths and overlays on plain tensors and arrays), which knows nothing of cards or
DICOM: this module maps a dataset, or a prediction, onto exactly what the model read (window, content crop,
bilateral half) and the heat map back onto the image.

Key images are drawn on the display image the decode step made (models.decode_pool.Display: the radiograph shrunk
to the key image's size once, at decode time), and the heat map is resized onto it, so colouring and blending run at
the output size and nothing is decoded a second time (bench/key_images.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import pydicom

from predictd.models.cascade_run import HALVES
from predictd.models.decode_pool import Plan, Prepared, framed, prepare
from predictd.models.ensemble import members_of
from predictd.models.explain import gradcam, overlay_rgb, unpad
from predictd.models.prediction import Prediction
from predictd.models.preprocess import gray_to_input, to_gray

if TYPE_CHECKING:
    from predictd.models.inference import Engine
    from predictd.models.loading import Resident

__all__ = ["KEY_IMAGE_SIDE", "explain", "explain_prediction", "overlay_of", "overlays"]


def explain(engine: Engine, ds: pydicom.Dataset, card_name: str, label_key: str | None = None) -> np.ndarray:
    """Grad-CAM heat map (float32 in [0, 1]) of one resident model for one dataset, in the geometry of the image.

    The map is for ``label_key``, or for the model's top class when None. It is computed on the padded
    square input and mapped back (padding cropped, resized), so it lies on ``to_gray(ds)`` pixel for pixel:
    ``overlay_png(to_gray(ds), explain(engine, ds, name), path)``. KeyError for a model that is not resident or a
    label the card does not have.
    """
    resident = engine.resident(card_name)
    prep = resident.card.preprocessing
    gray = to_gray(ds, prep.window)
    box = framed(gray, prep)
    part = gray[box]
    x = gray_to_input(part, replace(prep, crop_content=False))  # part is already the box
    heat = np.zeros(gray.shape, dtype=np.float32)
    heat[box] = _heat(engine, resident, x, _class_index(engine, resident, x, label_key), part.shape)
    return heat


KEY_IMAGE_SIDE = 1024
"""Longer side of a key image: it shows where the evidence lies, not fine detail (a full-size RGB CR is ~11 MB)."""


def explain_prediction(
    engine: Engine,
    ds: pydicom.Dataset,
    prediction: Prediction,
    *,
    alpha: float = 0.4,
    max_side: int | None = KEY_IMAGE_SIDE,
) -> np.ndarray:
    """RGB uint8 (rows, cols, 3): the image ``prediction`` was made from, with the Grad-CAM behind it overlaid.

    For a key image a person can look at, from a dataset (``predictd models explain``, tests); the classify stage
    makes the same overlay from what it decoded already (:func:`overlays`). ``max_side`` caps the longer side (None
    keeps the image size). Raises ValueError when ``ds`` is not the prediction's image or the resident model is
    another version.
    """
    if str(ds.get("SOPInstanceUID", "")) != prediction.sop_instance_uid:
        raise ValueError("the dataset is not the image the prediction was made from")
    card = engine.resident(prediction.model_name).card
    if card.version != prediction.model_version:
        raise ValueError(
            f"model {card.name} is resident as version {card.version}, the prediction came from "
            f"{prediction.model_version}: its Grad-CAM would explain another model"
        )
    halves = (card.preprocessing,) if card.bilateral else ()
    plan = Plan(whole=(card.preprocessing,), halves=halves, display_side=max_side or 1 << 30)
    return overlay_of(engine, prepare(ds, plan), prediction, alpha)


def overlays(
    engine: Engine, items: Sequence[Prepared], predictions: Sequence[Prediction], alpha: float = 0.4
) -> dict[int, np.ndarray]:
    """The key-image overlay of each decided finding in ``predictions`` (by index), from the prepared ``items``.

    What the classify stage calls right after the forward, on the inputs the models just read and the display image
    the decode step made (``Plan.display_side``): no second decode, and the report stage needs no engine. Router
    answers and undecided predictions get none (nothing to show); items prepared without a display give none.
    """
    by_uid = {item.sop_instance_uid: item for item in items}
    out: dict[int, np.ndarray] = {}
    for index, p in enumerate(predictions):
        item = by_uid.get(p.sop_instance_uid)
        if item is None or item.display is None or not p.is_decided:
            continue
        if engine.resident(p.model_name).card.role == "router":
            continue
        out[index] = overlay_of(engine, item, p, alpha)
    return out


def overlay_of(engine: Engine, item: Prepared, prediction: Prediction, alpha: float = 0.4) -> np.ndarray:
    """Grad-CAM of ``prediction`` on exactly the input its model read (the whole image, its content box, or the
    bilateral half ``prediction.region`` names), placed on ``item``'s display image (the other half and the cropped
    borders get no heat: framing is not evidence) and blended at the display size.

    The map is for the prediction's label; for an indeterminate one, for the class it leaned to (its top
    probability, no extra forward).
    """
    if item.display is None:
        raise ValueError("the image was prepared without a display (Plan.display_side)")
    resident = engine.resident(prediction.model_name)
    prep = resident.card.preprocessing
    gray = item.display.grays[prep.window].astype(np.float32) / 255.0
    rows, cols = item.display.boxes[prep]
    if prediction.region in HALVES:
        half = HALVES.index(str(prediction.region))
        x = item.halves[half][1][prep]
        width = cols.stop - cols.start
        cols = (
            slice(cols.start, cols.start + width // 2) if half == 0 else slice(cols.start + (width + 1) // 2, cols.stop)
        )
    else:
        x = item.inputs[prep]
    label = prediction.label if prediction.is_decided else _most_probable(prediction)
    index = _class_index(engine, resident, x, label)
    heat = np.zeros(gray.shape, dtype=np.float32)
    heat[rows, cols] = _heat(engine, resident, x, index, (rows.stop - rows.start, cols.stop - cols.start))
    return overlay_rgb(gray, heat, alpha)


def _most_probable(prediction: Prediction) -> str | None:
    """The class an indeterminate prediction leaned to (its top probability); None when it carries none."""
    if not prediction.probabilities:
        return None
    return max(prediction.probabilities, key=lambda key: prediction.probabilities[key])


def _class_index(engine: Engine, resident: Resident, x: np.ndarray, label_key: str | None) -> int:
    """Index of ``label_key`` in the card, or of the class predict would report for input ``x`` when None."""
    card = resident.card
    if label_key is None:  # same forward, same autocast as predict
        return int(np.argmax(engine.forward_only(x[np.newaxis], card.name)[0]))
    try:
        return card.label_keys.index(label_key)
    except ValueError:
        raise KeyError(f"model {card.name} has no label {label_key!r} (labels: {card.label_keys})") from None


def _heat(engine: Engine, resident: Resident, x: np.ndarray, index: int, shape: tuple[int, int]) -> np.ndarray:
    """Grad-CAM of class ``index`` for one model input, mapped back onto the ``shape`` of the part it was made from.

    Eager and float32 (gradients need no autocast); an ensemble's map is the mean of its members' maps.
    """
    batch = engine.eager_input(x[np.newaxis])
    maps = [gradcam(member, batch, index) for member in members_of(resident.model)]
    return unpad(np.mean(maps, axis=0).astype(np.float32), shape)
