"""Adapters for QEMU's tools (qemu-img)."""
