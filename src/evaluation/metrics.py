"""Summaries of a posterior over a split: the dimensions that carry the KL.

The validation pass (ELBO, KL per dimension, active units) is src/training/validation.py.
"""

from __future__ import annotations

from src.training.validation import kl_mass_units

__all__ = ["kl_mass_units"]  # defined with the validation pass, which reports it per group
