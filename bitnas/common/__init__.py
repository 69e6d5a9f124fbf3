"""Helpers several rooms share and no strategy owns."""
