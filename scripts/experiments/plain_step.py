"""The plain MNIST VAE program a user would write from the Flax example, timed from process start.

python scripts/experiments/plain_step.py MNIST_DIR [--steps=N]

Imports only JAX, Flax, Optax and NumPy (nothing of this project): reads the training images
from the IDX file, builds the MLP VAE 784-500-20 (tanh, Bernoulli likelihood), jits one Adam
step (batch 128, dynamic binarization and the reparameterization noise drawn inside, one host
NumPy batch per call) and prints the seconds from process start to the first step's loss on the
host, and the steps/s of the next N steps. It is the time-to-first-step counterpart of
`scripts/benchmark.py`'s time_to_first_step_s for configs/experiment/mnist.yaml
(docs/performance.md). Its sizes and optimizer are written in the code on purpose: it stands for
a program written without this project.
"""

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402


class VAE(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.enc = nnx.Linear(784, 500, rngs=rngs)
        self.enc_out = nnx.Linear(500, 40, rngs=rngs)
        self.dec = nnx.Linear(20, 500, rngs=rngs)
        self.dec_out = nnx.Linear(500, 784, rngs=rngs)

    def __call__(self, x: jax.Array, eps: jax.Array) -> jax.Array:
        mean, logvar = jnp.split(self.enc_out(jnp.tanh(self.enc(x))), 2, axis=-1)
        z = mean + jnp.exp(0.5 * logvar) * eps
        logits = self.dec_out(jnp.tanh(self.dec(z)))
        recon = jnp.sum(jax.nn.softplus(logits) - x * logits, axis=-1)
        kl = -0.5 * jnp.sum(1 + logvar - mean**2 - jnp.exp(logvar), axis=-1)
        return jnp.mean(recon + kl)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mnist_dir")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    raw = (Path(args.mnist_dir) / "train-images-idx3-ubyte").read_bytes()
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 784).astype(np.float32) / 255

    model = VAE(nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, key):
        k_bin, k_eps = jax.random.split(key)
        x = jax.random.bernoulli(k_bin, x).astype(jnp.float32)
        eps = jax.random.normal(k_eps, (x.shape[0], 20))
        loss, grads = jax.value_and_grad(lambda p: nnx.merge(graphdef, p)(x, eps))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    key = jax.random.key(0)
    params, opt_state, loss = step(params, opt_state, images[:128], key)
    first = float(loss)
    print(f"time to first step: {time.perf_counter() - STARTED:.2f} s (loss {first:.1f})")
    batches = [images[i * 128 : (i + 1) * 128] for i in range(args.steps)]
    tic = time.perf_counter()
    for i, batch in enumerate(batches):
        params, opt_state, loss = step(params, opt_state, batch, jax.random.fold_in(key, i))
    jax.block_until_ready(loss)
    print(f"steps/s: {args.steps / (time.perf_counter() - tic):.1f}")


if __name__ == "__main__":
    main()
