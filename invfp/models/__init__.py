"""Generative models of fingerprints conditioned on a property, and the surrogate."""
