"""Representations: positions -> per-atom features -> pooled fingerprint R."""
