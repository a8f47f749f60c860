"""The key streams of a run, derived from its seed."""

from __future__ import annotations

import jax


def derive_keys(seed: int) -> dict[str, jax.Array]:
    """One root key split once into the four streams the run uses."""
    init, data, train, evaluation = jax.random.split(jax.random.key(seed), 4)
    return {"init": init, "data": data, "train": train, "eval": evaluation}
