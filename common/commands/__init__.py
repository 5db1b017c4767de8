"""Subcommands of `fracfl` provided by the shared package: train, evaluate, data, model."""
