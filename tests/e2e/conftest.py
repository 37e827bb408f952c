"""End-to-end tier: real Orthanc, real dcmtk, ``predictd serve`` as a subprocess.

A developer machine without Orthanc or dcmtk skips the tier (with the reason) so ``make test`` stays usable; under
CI (``CI`` set, as ``.ci/run`` does) a missing tool fails every e2e test instead, because a silently skipped tier is
how a broken PACS round trip ships. Test modules mark themselves with ``pytestmark = pytest.mark.e2e`` (the marker
is registered in pyproject.toml) so ``-m "not e2e"`` deselects the tier.
"""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRED_TOOLS = ("Orthanc", "storescu", "storescp")
"""Binaries from the orthanc and dcmtk Debian packages that the e2e tests start."""


@pytest.fixture(autouse=True, scope="session")
def _e2e_tools() -> None:
    """Skip (developer machine) or fail (CI) when a required binary is not on PATH."""
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if not missing:
        return
    packages = "orthanc orthanc-gdcm orthanc-dicomweb dcmtk"
    message = f"e2e tier needs {', '.join(missing)} on PATH (apt-get install {packages})"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so missing tools are an error: {message}")
    pytest.skip(message)
