"""Scheduled syncs: job definitions, sources, mapping, checkpoints, dead letters, engine, fan-out."""
