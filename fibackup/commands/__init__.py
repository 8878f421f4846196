"""One module per command: the orchestration of adapters, store and model."""
