"""Generic helpers: config loading, errors, atomic I/O, command lines, determinism settings.

No module here imports JAX (tests/test_layers.py); the run's lifecycle is src/training/run/ and the
device code src/training/device/.
"""
