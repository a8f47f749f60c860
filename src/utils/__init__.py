"""Config, I/O, logging, seeding and provenance helpers. Importing this package never imports JAX."""
