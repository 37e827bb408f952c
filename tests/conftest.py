"""Fixtures for every tier."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import structlog

from tests.support import SHARED_DATA


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A ``shared_data`` test skips in a clone without ../shared; under CI the folder must be there, so it fails."""
    if item.get_closest_marker("shared_data") is None or SHARED_DATA.is_dir():
        return
    reason = f"needs the training images in {SHARED_DATA} (the project's ../shared), which this clone lacks"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run it")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """A test that configures logging (e.g. through the CLI) binds it to that test's captured stderr; undo it."""
    yield
    structlog.reset_defaults()
