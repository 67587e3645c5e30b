"""Environments: the real game (retro.py), subprocess vectors (vector.py), policies."""
