"""The run's lifecycle: its folders and lock, signals, runs.csv, provenance, the metric record,
the console, checkpoints and profiling."""
