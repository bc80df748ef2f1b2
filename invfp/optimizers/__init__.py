"""Optimizers: batched reconstruction of positions from target fingerprints."""
