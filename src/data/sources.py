"""Data sources: each returns all images of a dataset as float32 [N, H, W, C] in [0, 1]."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from src.utils.errors import ConfigError


def load_digits_images(cfg: Any) -> np.ndarray:
    """scikit-learn's bundled 8x8 digits (1797 images, integer levels 0..16), scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32) / 16.0
    return images[..., None]


SOURCES: dict[str, Callable[[Any], np.ndarray]] = {
    "digits": load_digits_images,
}


def load_images(cfg: Any) -> np.ndarray:
    """Dispatches on data.name; an unknown name is a config error listing the known ones."""
    if cfg.name not in SOURCES:
        raise ConfigError(f"data.name: unknown dataset {cfg.name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[cfg.name](cfg)
