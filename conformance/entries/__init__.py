"""Registry entries, one module per operator family."""
