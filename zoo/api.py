"""Placeholder until the public API lands."""
