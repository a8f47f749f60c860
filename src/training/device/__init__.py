"""Device code: the mesh and state layouts of data parallelism, the compilation cache."""
