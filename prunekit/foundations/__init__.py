"""Shared building blocks: registries, hyperparameter dataclasses, atomic pickle-free I/O."""
