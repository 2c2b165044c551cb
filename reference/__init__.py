"""The reference environment's scripts (see reference/README.md)."""
