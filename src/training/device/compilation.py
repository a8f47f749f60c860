"""JAX's persistent compilation cache, switched on from the `compile` config section.

A second process that compiles the same program (same code, shapes, flags, JAX version and
device) reads the executable from the cache instead of running XLA again. A cached executable
is the program XLA would have built, so the numbers do not change. JAX reads the setting when it
compiles for the first time, so scripts call enable_cache before any jit runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from src.utils.errors import ConfigError


def enable_cache(cfg: Any) -> Path | None:
    """Points JAX's persistent cache at cfg.cache_dir (the `compile` section); returns the folder.

    An empty cache_dir leaves JAX's own setting alone, so the JAX_COMPILATION_CACHE_DIR
    environment variable (used by the test suite) still works. min_compile_secs replaces JAX's
    default of 1 s, which would skip every program of the small models here.
    """
    if not cfg.cache_dir:
        return None
    path = Path(cfg.cache_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"compile.cache_dir={cfg.cache_dir!r}: cannot create the folder: {e}"
        ) from None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", cfg.min_compile_secs)
    return path
