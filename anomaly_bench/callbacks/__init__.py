"""Callbacks: heat-map visualiser, run-info writer, checkpointing defaults."""
