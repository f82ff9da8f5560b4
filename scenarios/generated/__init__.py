"""Scenarios drawn from a space of configurations, labeled by an independent oracle."""
