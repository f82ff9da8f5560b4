"""Integrations with training frameworks; each module loads only when its framework is installed."""
