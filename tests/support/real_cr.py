"""The real CR every clone has: pydicom-data's WG04 RG3 pixels in the shape and tags of a single-hip CR view.

Most tests need a real CR as a hip arrives (MONOCHROME2, 10 bits stored, JPEG-LS lossless, portrait, tagged HIP):
the tiny test models apply to the hip and the cascade routes on the tags and the image's shape. The one real hip
(WG04 RG2) is in ../shared, which a user's clone lacks, and its terms do not allow committing it; pydicom-data (a
test dependency) has RG3, an AP lower leg, uncompressed MONOCHROME1. So RG3 is converted once: the stored values
are inverted (MONOCHROME1 -> MONOCHROME2, the window centre with them, so it displays the same), the columns
cropped about the centre to RG2's portrait aspect (2140 x 1760), the anatomy tags set to RG2's (BodyPartExamined
HIP, StudyDescription "HIP JOINT"; laterality, view and orientation empty), new reproducible UIDs derived from the
source's, and the pixels encoded JPEG-LS lossless with pyjpegls. No test asks a model to be right about these
pixels (they show a leg): the shipped models are tested on RG2 itself, in ``shared_data`` tests. Written under
build/test-data/ once and reused.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE = Path(__file__).resolve().parents[2] / "build" / "test-data"
NAME = "RG3_as_hip_view_JLSL.dcm"
RG2_ASPECT = 2140 / 1760
"""Rows / columns of the real hip view (WG04 RG2) whose shape and tags the converted file takes."""


def pydicom_data_root() -> Path:
    import data_store  # type: ignore[import-untyped]  # the pydicom-data package installs this module

    return Path(data_store.__file__).parent / "data"


def real_cr_jlsl() -> Path:
    """The converted RG3 (see the module docstring), written on first use."""
    target = CACHE / NAME
    if target.is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.part")
    _convert(pydicom_data_root() / "RG3_UNCR.dcm", partial)
    partial.replace(target)  # atomic: a concurrent test process sees either nothing or the whole file
    return target


def _convert(src: Path, dst: Path) -> None:
    import numpy as np
    import pydicom
    from pydicom.uid import JPEGLSLossless, generate_uid

    ds = pydicom.dcmread(src)
    assert ds.PhotometricInterpretation == "MONOCHROME1", ds.PhotometricInterpretation
    top = (1 << int(ds.BitsStored)) - 1
    columns = round(int(ds.Rows) / RG2_ASPECT)
    left = (int(ds.Columns) - columns) // 2
    inverted = (top - ds.pixel_array[:, left : left + columns].astype(np.int32)).astype(np.uint16)
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.WindowCenter = top - int(ds.WindowCenter)
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.DerivationDescription = (
        "MONOCHROME1 inverted to MONOCHROME2, columns cropped to a portrait hip view, hip tags; JPEG-LS lossless"
    )
    ds.ImageComments = "WG04 RG3 (lower leg) as a single-hip view, for predictd's tests"
    ds.BodyPartExamined, ds.StudyDescription = "HIP", "HIP JOINT"
    ds.Laterality = ds.ViewPosition = ds.PatientOrientation = ""  # type 2: present, unknown (as in RG2)
    del ds.AcquisitionDeviceProcessingDescription  # "LOWER LEG"
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, keyword, generate_uid(entropy_srcs=[NAME, str(getattr(ds, keyword))]))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "DataSetTrailingPadding" in ds:
        del ds.DataSetTrailingPadding
    ds.Columns = columns
    ds.compress(JPEGLSLossless, inverted, encoding_plugin="pyjpegls")
    ds.save_as(dst, enforce_file_format=True)
