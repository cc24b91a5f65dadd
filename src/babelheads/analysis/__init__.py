"""Analyses: pure functions from run tables to tables."""
