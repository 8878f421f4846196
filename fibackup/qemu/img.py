"""A thin adapter over qemu-img (argument lists only, never a shell)."""
from __future__ import annotations

import json
import urllib.parse
import subprocess
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from fibackup.errors import ImageToolError, ImageToolTimeoutError

QEMU_IMG = "qemu-img"


@dataclass(frozen=True)
class ImageInfo:
    path: str
    format: str
    virtual_size: int
    backing_file: Optional[str]
    backing_format: Optional[str]
    data_file: Optional[str] = None
    """An external data file (qcow2 ``data_file``): the data is not in this file."""
    encrypted: bool = False
    """The image's data is encrypted inside it (qcow2 with LUKS): its bytes are not the
    guest's."""


def _run(args: Sequence[str], what: str, timeout: Optional[float] = None) -> str:
    try:
        completed = subprocess.run([QEMU_IMG, *args], capture_output=True, text=True, check=False,
                                   timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ImageToolTimeoutError(f"{what} did not finish within {timeout:g} s and was stopped") from None
    except FileNotFoundError:
        raise ImageToolError("qemu-img is not installed (Debian package qemu-utils); "
                             "run scripts/setup-host.sh") from None
    if completed.returncode != 0:
        detail = (completed.stderr or completed.stdout).strip().splitlines()
        message = detail[-1] if detail else f"exit code {completed.returncode}"
        raise ImageToolError(f"{what} failed: {message} (is qemu-utils installed and the "
                             "image readable? 'qemu-img info' on it tells more)")
    return completed.stdout


def info(path: str, image_format: Optional[str] = None, force_share: bool = False) -> ImageInfo:
    """Image facts.  Without ``force_share`` this fails on an image QEMU writes to."""
    args = ["info", "--output=json"]
    if image_format:
        args += ["-f", image_format]
    if force_share:
        args.append("-U")
    return _image_info(json.loads(_run([*args, path], f"qemu-img info {path}")), path)


def backing_chain(path: str, image_format: Optional[str] = None,
                  force_share: bool = False) -> list[ImageInfo]:
    """The chain below and including ``path``, top first (offline images only,
    unless ``force_share``: then only the headers' names are to be trusted)."""
    args = ["info", "--output=json", "--backing-chain"]
    if image_format:
        args += ["-f", image_format]
    if force_share:
        args.append("-U")
    documents = json.loads(_run([*args, path], f"qemu-img info {path}"))
    return [_image_info(document, document["filename"]) for document in documents]


def _image_info(document: dict[str, Any], path: str) -> ImageInfo:
    specific = document.get("format-specific", {}).get("data", {})
    return ImageInfo(path=path, format=document["format"],
                     virtual_size=int(document["virtual-size"]),
                     backing_file=document.get("full-backing-filename") or document.get("backing-filename"),
                     backing_format=document.get("backing-filename-format"),
                     data_file=specific.get("data-file"),
                     encrypted=bool(document.get("encrypted", False)))


def create_image(path: str, image_format: str, virtual_size: int) -> None:
    """A new empty image (reads as zeros) of ``virtual_size`` bytes."""
    _run(["create", "-q", "-f", image_format, path, str(virtual_size)], f"creating {path}")


def create_overlay(path: str, backing: str, backing_format: str, virtual_size: int) -> None:
    """A new empty qcow2 overlay on ``backing`` (name kept as given, may be relative)."""
    _run(["create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", backing_format,
          path, str(virtual_size)], f"creating overlay {path}")


def rebase_unsafe(path: str, backing: str, backing_format: str) -> None:
    """Rewrite the backing pointer of a qcow2 image without touching its data."""
    _run(["rebase", "-q", "-u", "-f", "qcow2", "-b", backing, "-F", backing_format, path],
         f"rewriting the backing file of {path}")


def convert(source: str, source_format: str, destination: str, output_format: str) -> None:
    """Flatten the chain under ``source`` into one new image."""
    _run(["convert", "-q", "-f", source_format, "-O", output_format, source, destination],
         f"flattening {source} into {destination}")


def commit(top: str, top_format: str, base: str, rate_bytes: int = 0,
           timeout: Optional[float] = None) -> None:
    """Merge ``top`` and every layer between it and ``base`` into ``base`` (offline).

    The merged layers keep their data (``-b`` implies ``-d``), so the chain
    above still shows the same content until it is rebased onto ``base``.
    """
    args = ["commit", "-q", "-f", top_format, "-b", base, "-d"]
    if rate_bytes:
        args += ["-r", str(rate_bytes)]
    _run([*args, top], f"qemu-img commit of {top} into {base}", timeout)


def make_standalone(path: str, timeout: Optional[float] = None) -> None:
    """Copy every backing layer's data into the qcow2 image ``path`` and drop its
    backing file (offline pull); the backing files are only read."""
    _run(["rebase", "-q", "-f", "qcow2", "-b", "", path],
         f"qemu-img rebase (pull) of {path}", timeout)


def nbd_uri(socket: str) -> str:
    """The NBD URI of the export on the Unix socket ``socket``."""
    return f"nbd+unix:///?socket={urllib.parse.quote(socket)}"


def chain_node(chain: Sequence[tuple[str, str]], read_only: bool = False,
               force_share: bool = False, writable_top: bool = False) -> dict[str, Any]:
    """The block node tree that stacks ``[(path, format)...]`` (base first) exactly,
    without reading any backing name from the image headers (stored copies still name
    the live files they were copied from).  ``read_only``: no layer is writable (but the
    top with ``writable_top``); ``force_share``: read-only layers open beside a writer."""
    node: Optional[dict[str, Any]] = None
    for position, (path, image_format) in enumerate(chain):
        frozen = read_only and not (writable_top and position == len(chain) - 1)
        options: dict[str, Any] = {"read-only": True, **(
            {"force-share": True} if force_share else {})} if frozen else {}
        layer: dict[str, Any] = {"driver": image_format, **options,
                                 "file": {"driver": "file", "filename": path, **options}}
        if image_format == "qcow2":
            layer["backing"] = node
        elif node is not None:
            raise ImageToolError(f"{path} is a raw image and cannot rest on another layer")
        node = layer
    if node is None:
        raise ImageToolError("an empty chain names no image")
    return node


def explicit_chain(chain: Sequence[tuple[str, str]], read_only: bool = False) -> str:
    """A ``json:`` image name for :func:`chain_node`."""
    return "json:" + json.dumps(chain_node(chain, read_only))


def make_standalone_explicit(chain: Sequence[tuple[str, str]],
                             timeout: Optional[float] = None) -> None:
    """Copy into the qcow2 top of ``chain`` (base first) the data of the layers below it,
    read through the explicit chain, and drop its backing file (offline pull).

    The layers below are only read.  Interrupted, the top keeps its backing name and
    holds a part of that data, which is the same data: the chain reads the same.
    """
    _run(["rebase", "-q", "-b", "", explicit_chain(chain)],
         f"qemu-img rebase (pull) of {chain[-1][0]}", timeout)


def convert_chain(layers: Sequence[tuple[str, str]], destination: str,
                  output_format: str) -> None:
    """Write what ``layers`` stacked present into the new standalone image ``destination``."""
    _run(["convert", "-q", "-O", output_format, explicit_chain(layers, read_only=True), destination],
         f"merging {len(layers)} layers into {destination}")


def identical(one: Sequence[tuple[str, str]], other: Sequence[tuple[str, str]]) -> bool:
    """Whether two chains present the same bytes (``qemu-img compare``; past the end
    of the shorter one the longer must read as zeros: callers compare sizes too)."""
    args = [QEMU_IMG, "compare", "-q", explicit_chain(one, read_only=True),
            explicit_chain(other, read_only=True)]
    completed = subprocess.run(args, capture_output=True, text=True, check=False)
    if completed.returncode in (0, 1):
        return completed.returncode == 0
    detail = completed.stderr.strip().splitlines()
    raise ImageToolError(f"qemu-img compare failed: {detail[-1] if detail else completed.returncode}")
