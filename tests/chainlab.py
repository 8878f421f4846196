"""Builders of chain-model objects shared by the unit tests."""
from fibackup.model.chain import FileIdentity, FrozenLayer, LiveLayer, StoredLayer

GiB = 1024 ** 3
HOST = "host1"


def identity(path, ino, mtime_ns=1_000, size=1_000_000, dev=42, host=HOST):
    return FileIdentity(host=host, path=path, dev=dev, ino=ino, size=size, mtime_ns=mtime_ns)


def frozen(path, ino, virtual_size=10 * GiB, fmt="qcow2", **identity_changes):
    return FrozenLayer(layer=LiveLayer(path=path, format=fmt),
                       identity=identity(path, ino, **identity_changes),
                       virtual_size=virtual_size)


def stored_from(item, layer_id, parent, disk="vda"):
    return StoredLayer(id=layer_id, disk=disk, parent=parent, image_format=item.layer.format,
                       size=item.identity.size, virtual_size=item.virtual_size,
                       digest="0" * 32, source=item.identity)
