"""Shared fixtures."""

from __future__ import annotations

import pytest

from tests.helpers import TINY


@pytest.fixture
def tiny_overrides() -> list[str]:
    """Overrides that shrink the baseline to a few seconds of training."""
    return list(TINY)
