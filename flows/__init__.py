"""Prefect front-end: flows that run the DVC stages (no ML logic lives here)."""
