"""wm: Dreamer 4 (Hafner, Yan, Lillicrap 2025) as a reproducible DVC + Prefect pipeline."""

__version__ = "0.1.0"
