"""The first VOI window, computed by predictd (models.preprocess._linear_window), gives what pydicom's
apply_windowing gives, for every VOI function and edge case the standard names."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest

import predictd.models.preprocess as preprocess
from predictd.models.preprocess import to_gray
from tests.support import CR_JLSL, pydicom_data_file


def _by_pydicom(ds: pydicom.Dataset, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    with monkeypatch.context() as patch:
        patch.setattr(preprocess, "_linear_window", lambda values, ds: None)
        return to_gray(ds)


@pytest.mark.parametrize("path", [CR_JLSL, pydicom_data_file("RG1_UNCR.dcm"), pydicom_data_file("RG3_UNCR.dcm")])
def test_real_windows_match_pydicom(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = pydicom.dcmread(path)
    assert "WindowCenter" in ds
    np.testing.assert_allclose(to_gray(ds), _by_pydicom(ds, monkeypatch), atol=1e-6)


@pytest.fixture(scope="module")
def hip() -> pydicom.Dataset:
    ds = pydicom.dcmread(CR_JLSL)
    ds.decompress()
    return ds


@pytest.mark.parametrize(
    ("function", "center", "width"),
    [("LINEAR_EXACT", 600.0, 300.0), ("SIGMOID", 600.0, 300.0), ("LINEAR", 600.0, 1.0), ("", 600.0, 300.0)],
    ids=["linear-exact", "sigmoid", "linear-width-1-threshold", "function-empty-means-linear"],
)
def test_each_function_matches_pydicom(
    hip: pydicom.Dataset, function: str, center: float, width: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = copy.deepcopy(hip)
    ds.WindowCenter, ds.WindowWidth = center, width
    if function:
        ds.VOILUTFunction = function
    gray = to_gray(ds)
    np.testing.assert_allclose(gray, _by_pydicom(ds, monkeypatch), atol=1e-6)
    assert 0.0 <= gray.min() < gray.max() <= 1.0


def test_a_window_the_standard_forbids_falls_back_to_min_max(hip: pydicom.Dataset) -> None:
    ds = copy.deepcopy(hip)
    ds.WindowCenter, ds.WindowWidth = 600.0, 0.5  # LINEAR needs a width of at least 1
    np.testing.assert_array_equal(to_gray(ds), to_gray(ds, "minmax"))


def test_the_first_of_several_windows_is_used(hip: pydicom.Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = copy.deepcopy(hip)
    ds.WindowCenter, ds.WindowWidth = [500.0, 900.0], [400.0, 100.0]
    np.testing.assert_allclose(to_gray(ds), _by_pydicom(ds, monkeypatch), atol=1e-6)
    ds.WindowCenter, ds.WindowWidth = 500.0, 400.0
    np.testing.assert_allclose(to_gray(ds), _by_pydicom(ds, monkeypatch), atol=1e-6)
