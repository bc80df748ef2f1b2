"""Validators: accept or reject reconstructed structures, with a metric each."""
