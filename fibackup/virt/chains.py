"""A disk's live backing chain, from libvirt's XML or, where that is incomplete,
from the image headers (qemu-img)."""
from __future__ import annotations

import os

from fibackup.errors import InconsistentChainError
from fibackup.model.chain import LiveLayer
from fibackup.qemu import img
from fibackup.virt.domxml import DiskSpec


def live_chain(spec: DiskSpec, running: bool) -> tuple[LiveLayer, ...]:
    """The disk's chain, base first, active layer last."""
    assert spec.source is not None
    top = LiveLayer(os.path.abspath(spec.source), spec.format)
    if spec.backing_terminated:
        return tuple(reversed((top, *spec.backing)))
    if running and not spec.backing:
        raise InconsistentChainError(
            f"libvirt reports no backing chain for running disk {spec.target}; refusing to "
            "guess which layers are frozen (is libvirtd older than 5.x? upgrade it)")
    # only frozen layers, or the images of a shut-off domain, are probed
    probe_from = spec.backing[-1] if spec.backing else top
    known = [top, *spec.backing[:-1]] if spec.backing else []
    probed = [LiveLayer(info.path, info.format)
              for info in img.backing_chain(probe_from.path, probe_from.format)]
    return tuple(reversed([*known, *probed]))
