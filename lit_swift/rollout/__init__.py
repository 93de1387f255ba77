"""Rollout engines for online RL: generate completions over token ids (see `engine.py`)."""
