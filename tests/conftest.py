"""Shared fixtures."""

from __future__ import annotations

import os

import pytest

from tests.helpers import JAX_CACHE_ENV, TINY

for _name, _value in JAX_CACHE_ENV.items():
    os.environ.setdefault(_name, _value)


@pytest.fixture
def tiny_overrides() -> list[str]:
    """Overrides that shrink the baseline to a few seconds of training."""
    return list(TINY)
