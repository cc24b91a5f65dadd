"""Experiments: each one a use of the instrument that turns tasks into run tables."""
