"""Compression and deployment: pruning, INT8 quantization and export of trained models, with their measurements."""
