"""Research codebase for latent-variable models (VAEs) in JAX/Flax."""
