"""Grad-CAM heat maps and overlays a person can look at: which part of the image drove a prediction.

Selvaraju et al. 2017: the target layer's activations A (C, h, w), weighted per channel by the spatial mean of
d score / d A, summed, ReLU, upsampled to the input. The default target layer is the last module whose output is a
4-D feature map with more than one pixel: the end of the convolutional trunk of every card architecture (timm resnet
``layer4``, efficientnet ``bn2``, densenet ``features``, convnext ``norm_pre``, nfnet ``final_act``).

Ours (forward hooks + ``torch.autograd.grad``, ~50 lines), not the grad-cam package (pytorch-grad-cam 1.5.7), whose
GradCAM would save little: it has no default target layer (one per architecture to name), calls ``backward`` (so
``.grad`` accumulates in the resident weights), rescales each map min-to-max (here 0 stays "no evidence"), and
``import pytorch_grad_cam`` loads all its methods, so it requires opencv-python-headless, matplotlib and ttach (none
installed here) besides tqdm, scipy, scikit-learn and torchvision.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def _feature_maps(
    model: torch.nn.Module, inputs: torch.Tensor, layer: torch.nn.Module | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, target activation) of one forward pass with autograd recording."""
    seen: list[torch.Tensor] = []

    def keep(_module: torch.nn.Module, _args: object, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4:
            seen.append(output)

    modules = [layer] if layer is not None else [m for m in model.modules() if m is not model]
    handles = [m.register_forward_hook(keep) for m in modules]
    try:
        logits = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        what = "the given layer" if layer is not None else "any module of the model"
        raise ValueError(f"Grad-CAM needs a 4-D (N, C, H, W) output from {what}; none was seen")
    if layer is not None:
        return logits, seen[-1]
    spatial = [t for t in seen if t.shape[-2] * t.shape[-1] > 1]  # skip the global pool's (N, C, 1, 1)
    return logits, (spatial or seen)[-1]


def gradcam(
    model: torch.nn.Module, inputs: torch.Tensor, class_index: int, layer: torch.nn.Module | None = None
) -> np.ndarray:
    """Grad-CAM of ``class_index`` for one (1, C, H, W) input → (H, W) float32 in [0, 1] (0 = no evidence).

    Runs with gradients on even when called inside ``torch.inference_mode()`` / ``no_grad``; the model's
    parameters are not changed and need not require grad. Pass the model in eval mode (BatchNorm statistics).
    All zeros when nothing in the layer speaks for the class (the weighted sum is negative everywhere): common
    for a class that was not predicted, and for untrained models.
    """
    if inputs.ndim != 4 or inputs.shape[0] != 1:
        raise ValueError(f"expected one (1, C, H, W) input, got shape {tuple(inputs.shape)}")
    height, width = int(inputs.shape[-2]), int(inputs.shape[-1])
    with torch.inference_mode(False), torch.enable_grad():
        # A fresh leaf that requires grad: the graph exists even if every parameter is frozen, and a tensor
        # created under inference_mode cannot enter autograd, so copy it out first.
        x = inputs.detach().clone().requires_grad_(True)
        logits, acts = _feature_maps(model, x, layer)
        if logits.ndim != 2 or not 0 <= class_index < logits.shape[1]:
            raise ValueError(f"class_index {class_index} out of range for logits of shape {tuple(logits.shape)}")
        (grads,) = torch.autograd.grad(logits[0, class_index].float(), acts)
        weights = grads.float().mean(dim=(2, 3), keepdim=True)  # (1, C, 1, 1)
        cam = torch.relu((weights * acts.float()).sum(dim=1, keepdim=True))  # (1, 1, h, w)
        cam = F.interpolate(cam.detach(), size=(height, width), mode="bilinear", align_corners=False)
    heat = cam[0, 0].clamp_min(0).cpu().numpy().astype(np.float32)
    peak = float(heat.max())
    return heat / peak if peak > 0 else np.zeros_like(heat)


def unpad(heat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Map a heat map on the square model input back onto the ``shape`` (rows, cols) image it came from.

    Inverts models.preprocess.resize_pad's geometry (long side scaled to the square, centred zero pad): crop
    the padding, resize to the image. Values stay in [0, 1].
    """
    size = heat.shape[0]
    if heat.ndim != 2 or heat.shape[1] != size:
        raise ValueError(f"expected a square heat map, got shape {heat.shape}")
    h, w = int(shape[0]), int(shape[1])
    scale = size / max(h, w)
    new_h, new_w = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    top, left = (size - new_h) // 2, (size - new_w) // 2
    crop = np.ascontiguousarray(heat[top : top + new_h, left : left + new_w], dtype=np.float32)
    resized = Image.fromarray(crop, mode="F").resize((w, h), resample=Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def jet(values: np.ndarray) -> np.ndarray:
    """The classic 'jet' colormap (blue → cyan → yellow → red) of values in [0, 1] → uint8 (..., 3)."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., np.newaxis]
    centres = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # where red, green, blue peak
    rgb = np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)
    return np.asarray(np.round(rgb * 255), dtype=np.uint8)


def overlay_rgb(gray: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """``gray`` (2-D in [0, 1], e.g. models.preprocess.to_gray) with ``heat`` blended over it in jet colours.

    Returns uint8 (rows, cols, 3) RGB: what overlay_png writes and what a key image (Secondary Capture) carries.
    The heat map is resized to the image if its shape differs (it should already be aligned: see
    ``models.explain_engine.explain``). Where the map is 0 the radiograph shows through more (blend weight scales
    with heat).
    """
    if gray.ndim != 2 or heat.ndim != 2:
        raise ValueError(f"expected 2-D gray and heat, got {gray.shape} and {heat.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], not {alpha}")
    h, w = gray.shape
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != gray.shape:
        heat = np.asarray(
            Image.fromarray(np.ascontiguousarray(heat), mode="F").resize((w, h), Image.Resampling.BILINEAR)
        )
    heat = np.clip(heat, 0.0, 1.0)
    base = np.repeat(np.clip(gray.astype(np.float32), 0.0, 1.0)[..., np.newaxis], 3, axis=2)
    colour = jet(heat).astype(np.float32) / 255.0
    weight = (alpha * (0.25 + 0.75 * heat))[..., np.newaxis]
    blended = (1.0 - weight) * base + weight * colour
    return np.asarray(np.round(blended * 255), dtype=np.uint8)


def overlay_png(gray: np.ndarray, heat: np.ndarray, path: Path, alpha: float = 0.4) -> Path:
    """Write :func:`overlay_rgb` of ``gray`` and ``heat`` as a PNG (for people reviewing a model, not for the PACS)."""
    rgb = overlay_rgb(gray, heat, alpha)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb, mode="RGB").save(path, format="PNG")
    return path
