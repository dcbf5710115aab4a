"""Twin conformance: every accel operator against its NumPy reference (docs/methods.md §1.15)."""
