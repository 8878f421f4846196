"""The backup store: on-disk format (docs/FORMAT.md), copy engine, manifests; start at repo.py."""
