"""Fixtures for every tier."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """A test that configures logging (e.g. through the CLI) binds it to that test's captured stderr; undo it."""
    yield
    structlog.reset_defaults()
