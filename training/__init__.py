"""Training, evaluation and export of MTP models (see docs/contract.md for the exported package)."""
