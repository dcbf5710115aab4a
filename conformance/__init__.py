"""Twin conformance: every accel operator against its NumPy reference (DESIGN.md "conformance/")."""
