"""The guest's view of a chain of image files, without parsing any image format here:
``qemu-img map`` says which layer holds which range, and qemu-storage-daemon exports
the stacked chain as one plain file over FUSE (read-only for a backup, writable to
build a restored image).  Argument lists only, never a shell.

A chain is given as ``[(path, format)...]``, base first, and opened exactly so
(qemu/img.explicit_chain): the backing names inside the headers are never followed.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

from fibackup.errors import ImageToolError
from fibackup.qemu.img import QEMU_IMG, chain_node, explicit_chain

QSD = "qemu-storage-daemon"
Chain = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class Extent:
    """A range of the view and which layer holds it (``qemu-img map`` JSON)."""

    start: int
    length: int
    depth: int
    """0: the top layer of the chain, 1: the one below... (for a range no layer
    holds: the number of layers, or the bottom's depth when QEMU says so)."""
    present: bool
    """Some layer of the chain holds this range (data, or clusters marked zero)."""
    data: bool
    zero: bool
    offset: Optional[int] = None
    """Where the layer at ``depth`` keeps this range's bytes, as they are, in its file
    (None: QEMU cannot say, e.g. compressed qcow2 clusters)."""


def allocation(chain: Chain, timeout: Optional[float] = None) -> list[Extent]:
    """Which layer of ``chain`` holds each range of the view (shared read: the layers
    may be open in a running QEMU, which never writes to them)."""
    args = [QEMU_IMG, "map", "--output=json", "-U", explicit_chain(chain, read_only=True)]
    try:
        done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=timeout)
    except FileNotFoundError:
        raise ImageToolError("qemu-img is not installed (Debian package qemu-utils); run "
                             "scripts/setup-host.sh") from None
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()
        raise ImageToolError(f"qemu-img map of {chain[-1][0]} failed: "
                             f"{detail[-1] if detail else done.returncode}")
    extents = []
    for entry in json.loads(done.stdout):
        data = bool(entry.get("data"))
        extents.append(Extent(start=int(entry["start"]), length=int(entry["length"]),
                              depth=int(entry.get("depth", len(chain))),
                              present=bool(entry.get("present", data)), data=data,
                              zero=bool(entry.get("zero")),
                              offset=int(entry["offset"]) if "offset" in entry else None))
    return extents


def changed_ranges(extents: Sequence[Extent], top_layers: Optional[int]) -> list[tuple[int, int]]:
    """The ranges that the top ``top_layers`` layers of the chain hold (what changed since
    the view below them); None: every range holding data (a whole new copy)."""
    if top_layers is None:
        return [(extent.start, extent.length) for extent in extents if extent.data]
    return [(extent.start, extent.length) for extent in extents
            if extent.present and extent.depth < top_layers]


def _node(chain: Chain, writable: bool) -> dict[str, Any]:
    """The blockdev tree of ``chain`` for qemu-storage-daemon (top node named ``view``):
    every layer read-only and shared with a running QEMU, but the top with ``writable``."""
    node = chain_node([(os.path.abspath(path), image_format) for path, image_format in chain],
                      read_only=True, force_share=True, writable_top=writable)
    node["node-name"] = "view"
    return node


@contextlib.contextmanager
def exported(chain: Chain, writable: bool = False,
             scratch: Optional[str] = None) -> Iterator[str]:
    """The view of ``chain`` as a plain file (FUSE, served by qemu-storage-daemon) for
    the duration of the ``with``; with ``writable``, writes go to the top layer.

    The daemon is stopped and the mount removed on the way out, whatever happens.
    """
    where = tempfile.mkdtemp(prefix="fibackup-view-", dir=scratch)
    mountpoint = os.path.join(where, "disk")
    pidfile = os.path.join(where, "pid")
    open(mountpoint, "wb").close()
    args = [QSD, "--blockdev", json.dumps(_node(chain, writable)),
            "--export", f"type=fuse,id=view{secrets.token_hex(3)},node-name=view,"
            f"mountpoint={mountpoint},writable={'on' if writable else 'off'}",
            "--pidfile", pidfile]
    daemon: Optional[subprocess.Popen[bytes]] = None
    log = os.path.join(where, "log")
    try:
        daemon = _start(args, chain, mountpoint, log)
        yield mountpoint
    finally:
        if daemon is not None:
            _end(daemon)
        if _mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True,
                           check=False)
        for name in (mountpoint, pidfile, log):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(where, name))
        with contextlib.suppress(OSError):
            os.rmdir(where)


@contextlib.contextmanager
def exported_nbd(socket: str, path: str, log: str) -> Iterator[int]:
    """The raw disk served on the NBD Unix ``socket`` as the read-only plain file
    ``path`` (FUSE, by qemu-storage-daemon) for the duration of the ``with``; yields the
    daemon's pid.  ``path`` is created (mode 0400) and removed again; the daemon
    unmounts it when it ends, and is killed if this process is (PR_SET_PDEATHSIG)."""
    node = {"node-name": "view", "driver": "raw", "read-only": True,
            "file": {"driver": "nbd", "read-only": True,
                     "server": {"type": "unix", "path": socket}}}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    os.close(fd)
    args = [QSD, "--blockdev", json.dumps(node), "--export",
            f"type=fuse,id=raw{secrets.token_hex(3)},node-name=view,mountpoint={path},"
            "writable=off"]
    daemon: Optional[subprocess.Popen[bytes]] = None
    try:
        daemon = _start(args, [(path, "raw")], path, log, with_parent=True)
        yield daemon.pid
    finally:
        if daemon is not None:
            _end(daemon)
        if _mounted(path):
            subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            os.unlink(path)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux prctl)."""
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)          # PR_SET_PDEATHSIG


def _start(args: Sequence[str], chain: Chain, mountpoint: str,
           log: str, with_parent: bool = False) -> "subprocess.Popen[bytes]":
    """qemu-storage-daemon as a child of this process (reaped by it), once its export is
    mounted; what it prints goes to ``log``."""
    try:
        with open(log, "ab" if with_parent else "wb") as output:
            daemon = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=output,
                                      stderr=output,
                                      preexec_fn=_die_with_parent if with_parent else None)
    except FileNotFoundError:
        raise ImageToolError("qemu-storage-daemon is not installed (Debian package "
                             "qemu-system-common); run scripts/setup-host.sh") from None
    deadline = time.monotonic() + 120
    while not _mounted(mountpoint):
        if daemon.poll() is not None:
            with open(log, "rb") as output:
                detail = output.read().decode(errors="replace")
            lines = detail.strip().splitlines()
            message = lines[-1] if lines else f"exit code {daemon.returncode}"
            hint = " (is fuse3 installed and /dev/fuse there?)" if "fuse" in message.lower() \
                else ""
            raise ImageToolError(f"qemu-storage-daemon could not export {chain[-1][0]}: "
                                 f"{message}{hint}")
        if time.monotonic() > deadline:
            _end(daemon)
            raise ImageToolError(f"qemu-storage-daemon did not export {chain[-1][0]} within "
                                 "120 s")
        time.sleep(0.003)
    return daemon


def _end(daemon: "subprocess.Popen[bytes]") -> None:
    """Stop the daemon (it flushes and unmounts its export on SIGTERM) and reap it."""
    if daemon.poll() is None:
        daemon.terminate()
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def stop_leftovers(scratch: str) -> list[str]:
    """Stop the exports a killed run left below ``scratch`` (its daemons and mounts);
    the mountpoints it removed."""
    removed: list[str] = []
    try:
        names = os.listdir(scratch)
    except OSError:
        return removed
    for name in names:
        where = os.path.join(scratch, name)
        if not name.startswith("fibackup-view-") or not os.path.isdir(where):
            continue
        pidfile, mountpoint = os.path.join(where, "pid"), os.path.join(where, "disk")
        if _is_daemon(pidfile):
            _stop(pidfile, mountpoint)
        elif _mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True,
                           check=False)
        for leftover in (mountpoint, pidfile, os.path.join(where, "log")):
            with contextlib.suppress(OSError):
                os.unlink(leftover)
        with contextlib.suppress(OSError):
            os.rmdir(where)
        removed.append(mountpoint)
    return removed


def _is_daemon(pidfile: str) -> bool:
    """Whether the pid file names a running qemu-storage-daemon (a pid may be reused)."""
    try:
        with open(pidfile) as handle:
            return is_daemon_pid(int(handle.read().strip()))
    except (OSError, ValueError):
        return False


def is_daemon_pid(pid: int) -> bool:
    """Whether ``pid`` is a running qemu-storage-daemon."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return QSD.encode() in handle.read().split(b"\0")[0]
    except OSError:
        return False


def _stop(pidfile: str, mountpoint: str) -> None:
    """End the daemon (it unmounts its export on SIGTERM); unmount by hand if it is gone."""
    try:
        with open(pidfile) as handle:
            pid = int(handle.read().strip())
    except (OSError, ValueError):
        pid = 0
    if pid > 0:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(3000):
            if not _alive(pid):
                break
            time.sleep(0.01)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if _mounted(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True, check=False)


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie waiting for its parent to reap it does not)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _mounted(path: str) -> bool:
    """Whether a file system is mounted on ``path`` (/proc/self/mounts escapes spaces,
    tabs, newlines and backslashes in octal)."""
    def unescape(field: str) -> str:
        return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)
    try:
        with open("/proc/self/mounts") as handle:
            return any(len(line.split()) > 1 and unescape(line.split()[1]) == path
                       for line in handle)
    except OSError:
        return False
