"""Reward functions for GRPO: the ORM plugin contract, built-ins (verifiable, shaping, reward model) and loading."""
