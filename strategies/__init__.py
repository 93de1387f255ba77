"""Distributed-strategy presets (installed as `lit_swift.strategies`)."""
