"""Adapters for libvirt: connection, domains and domain XML."""
