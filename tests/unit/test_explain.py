"""models.explain and models.explain_engine: Grad-CAM on tiny timm models, on a hand-built net with a known answer,
and of a resident model on a real radiograph; PNG overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import timm
import torch
from PIL import Image

from predictd.models.card import Label
from predictd.models.demo import TINY_ARCH, write_model
from predictd.models.explain import gradcam, jet, overlay_png, unpad
from predictd.models.explain_engine import explain
from predictd.models.inference import Engine
from predictd.models.preprocess import resize_pad, to_gray
from tests.support import CR_JLSL


class _HalfMask(torch.nn.Module):
    """Channel 0 keeps only the left half of the feature map, channel 1 only the right half."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros_like(x)
        half = x.shape[-1] // 2
        mask[:, 0, :, :half] = 1.0
        mask[:, 1, :, half:] = 1.0
        return x * mask


def _left_right_net() -> torch.nn.Sequential:
    """logit 1 = mean of the left half of the image, logit 0 = mean of the right half (both channels = 2x2 means)."""
    conv = torch.nn.Conv2d(1, 2, kernel_size=2, stride=2, bias=False)
    head = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(0.25)
        head.weight.copy_(torch.tensor([[0.0, 2.0], [2.0, 0.0]]))
    net = torch.nn.Sequential(conv, _HalfMask(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), head)
    return net.eval()


def test_left_half_model_lights_up_left_half() -> None:
    net = _left_right_net()
    x = torch.rand(1, 1, 32, 48) + 0.1  # not square: a transposed map would be caught
    assert net(x)[0, 1].item() == pytest.approx(x[..., :24].mean().item(), rel=1e-5)
    left = gradcam(net, x, class_index=1)
    assert left.shape == (32, 48) and left.dtype == np.float32
    assert left[:, :24].sum() > 0.9 * left.sum()
    right = gradcam(net, x, class_index=0)
    assert right[:, 24:].sum() > 0.9 * right.sum()


@pytest.mark.parametrize("arch", [TINY_ARCH, "test_resnet", "test_convnext", "test_nfnet"])
def test_gradcam_on_timm(arch: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=3, in_chans=1).eval()
    x = torch.randn(1, 1, 128, 96)
    with torch.inference_mode():  # as Engine.predict runs: Grad-CAM must turn gradients back on
        top = int(model(x).argmax())  # the top class has positive evidence (sum of the map = its logit - bias)
        heat = gradcam(model, x, class_index=top)
    assert heat.shape == (128, 96) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)
    assert heat.std() > 0.01
    assert all(p.grad is None for p in model.parameters())


def test_gradcam_rejects_bad_input() -> None:
    net = _left_right_net()
    with pytest.raises(ValueError, match="one"):
        gradcam(net, torch.rand(2, 1, 8, 8), 0)
    with pytest.raises(ValueError, match="class_index"):
        gradcam(net, torch.rand(1, 1, 8, 8), 5)


def test_unpad_inverts_resize_pad() -> None:
    img = np.ones((30, 80), dtype=np.float32)
    square = resize_pad(img, 64)  # ones where the image is, zeros in the padding
    back = unpad(square, img.shape)
    assert back.shape == img.shape
    assert back[1:-1, 1:-1].min() > 0.99


def test_jet_ends() -> None:
    colours = jet(np.array([0.0, 0.5, 1.0]))
    assert colours[0, 2] > 100 and colours[0, 0] == 0  # blue
    assert colours[1, 1] == 255  # green in the middle
    assert colours[2, 0] > 100 and colours[2, 2] == 0  # red


def test_overlay_png(tmp_path: Path) -> None:
    gray = np.tile(np.linspace(0, 1, 40, dtype=np.float32), (30, 1))
    heat = np.zeros((10, 10), dtype=np.float32)
    heat[:, :5] = 1.0
    path = overlay_png(gray, heat, tmp_path / "sub" / "o.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (40, 30) and img.mode == "RGB"
        rgb = np.asarray(img, dtype=np.float32)
    assert rgb[:, :15, 0].mean() > rgb[:, :15, 2].mean()  # hot (red) on the left


def test_engine_explain_on_real_hip(tmp_path: Path) -> None:
    labels = (Label("a", "class a"), Label("b", "class b"))
    write_model(tmp_path / "m" / "tiny", name="tiny", task="t", labels=labels, input_size=96)
    engine = Engine.load(tmp_path / "m")
    ds = pydicom.dcmread(CR_JLSL)
    heat = explain(engine, ds, "tiny")
    gray = to_gray(ds)
    assert heat.shape == gray.shape and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0 and heat.std() > 0.01
    assert explain(engine, ds, "tiny", label_key="b").shape == gray.shape
    with pytest.raises(KeyError):
        explain(engine, ds, "tiny", label_key="zzz")
    path = overlay_png(gray, heat, tmp_path / "hip.png")
    with Image.open(path) as img:
        assert img.size == (ds.Columns, ds.Rows)
