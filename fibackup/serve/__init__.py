"""Serving a stored restore point's disks without copying them: each disk of a format-3
point read-only over NBD as a raw disk (nbdkit with fibackup's Python plugin), decoded
from the store chunk by chunk, every chunk checked before it is served
(docs/SERVING.md)."""
