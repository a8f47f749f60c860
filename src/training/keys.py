"""Every PRNG stream of a run, derived from training.seed.

The promise: a key is a pure function of the seed and of the step, epoch, batch or chunk it
serves, so the same seed gives the same numbers bit for bit, a resumed run needs no saved RNG
state, and no two streams share noise. Changing any function here changes every result; the
tests pin their values (tests/test_keys.py).

    root = key(seed)
    |-- split(root, 4) = init, data, train, eval
    |     (split(root, n)[i] equals fold_in(root, i) under jax_threefry_partitionable, the
    |     default since JAX 0.5; tested, and what makes ESTIMATOR_STREAM a fifth stream)
    |   |-- init                        model and optimizer initialisation
    |   |-- data -> fold_in(data, epoch)   the epoch's order (src/data/pipeline.py:
    |   |                                  epoch_permutation; data sits below training)
    |   |-- train -> step_key = fold_in(train, step)
    |   |     |-- split(step_key) = eps, binarize        noise_keys: z noise, dynamic binarization
    |   |     `-- fold_in(step_key, DROPOUT_STREAM)       dropout_key (transformer dropout),
    |   |           then fold_in(., device) (device_key; device 0 under jit), split into
    |   |           encoder / decoder and folded per block inside the model
    |   `-- eval -> fold_in(eval, batch)   validation noise of batch i (batch_key)
    `-- fold_in(root, ESTIMATOR_STREAM) -> iwae (0), mi (1), figures (2)   scripts/evaluate.py
          iwae -> fold_in(., batch) -> fold_in(., chunk)   (src/evaluation/estimators.py)
          figures -> split = keep, prior   a hierarchical model's figures (figure_keys):
                                          resampled groups of the reconstructions, prior samples

data.eval_binarize_seed and data.synthetic.seed are separate seeds of the data, not streams of
training.seed.
"""

from __future__ import annotations

import jax

ESTIMATOR_STREAM = 4  # after init, data, train, eval (split(root, 4) = fold_in(root, 0..3))
DROPOUT_STREAM = 1  # fold_in tag of the dropout key; the noise keys come from split(step_key)


def run_keys(seed: int) -> dict[str, jax.Array]:
    """The four streams of training: init, data, train, eval."""
    init, data, train, evaluation = jax.random.split(jax.random.key(seed), 4)
    return {"init": init, "data": data, "train": train, "eval": evaluation}


def estimator_keys(seed: int) -> dict[str, jax.Array]:
    """scripts/evaluate.py's streams. elbo is the run's eval key, so the ELBO repeats the
    run's validation numbers; iwae, mi and figures come from the fifth stream."""
    root = jax.random.fold_in(jax.random.key(seed), ESTIMATOR_STREAM)
    return {
        "elbo": run_keys(seed)["eval"],
        "iwae": jax.random.fold_in(root, 0),
        "mi": jax.random.fold_in(root, 1),
        "figures": jax.random.fold_in(root, 2),
    }


def figure_keys(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(keep key, prior key) of the figures key, for a hierarchical model's figures: the noise of
    the groups resampled in the keep-the-top-m reconstructions, and of the prior samples (one
    draw shared by every temperature)."""
    keep, prior = jax.random.split(key)
    return keep, prior


def step_key(train_key: jax.Array, step: int | jax.Array) -> jax.Array:
    """The key of training step `step` (its global number, so resume replays it)."""
    return jax.random.fold_in(train_key, step)


def batch_key(key: jax.Array, index: int | jax.Array) -> jax.Array:
    """The key of evaluation batch `index` of a pass (validation, the IWAE pass)."""
    return jax.random.fold_in(key, index)


def noise_keys(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(eps key, binarization key) of one step key."""
    eps, binarize = jax.random.split(key)
    return eps, binarize


def dropout_key(key: jax.Array) -> jax.Array:
    """The dropout key of one step key."""
    return jax.random.fold_in(key, DROPOUT_STREAM)


def device_key(key: jax.Array, device: int | jax.Array) -> jax.Array:
    """A per-device copy of key (dropout under shard_map and pmap; device 0 under jit)."""
    return jax.random.fold_in(key, device)
