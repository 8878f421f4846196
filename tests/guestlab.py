"""Guest filesystems for the file-level tests, made with libguestfs (real partition
tables, ext4, xfs, vfat, LVM, btrfs when the appliance has it) and described by a
model of what each holds, which restored files are compared with."""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Optional

from fibackup.guest.appliance import binding

os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")   # tests/README.md


@dataclass
class Entry:
    kind: str                    # "file", "dir", "link"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: Optional[int] = None
    target: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)
    hole: int = 0                # bytes of hole before data (a sparse file)


Tree = dict[str, Entry]
"""Path inside one filesystem ("a/b") -> what it is."""


def posix_tree(tag: str) -> Tree:
    """What a POSIX filesystem of the tests holds (``tag`` makes contents differ)."""
    return {
        "hello.txt": Entry("file", f"hello {tag}\n".encode(), 0o4750, 1234, 5678, 1_600_000_000,
                           xattrs={"user.note": f"note {tag}".encode()}),
        "dir with space": Entry("dir", mode=0o750, uid=33, gid=33, mtime=1_500_000_000),
        "dir with space/ünïcødé ☃.txt": Entry("file", (tag * 5000).encode()[:20000], 0o600,
                                             1000, 1000, 1_650_000_000),
        "sparse.bin": Entry("file", b"end of a sparse file", 0o644, mtime=1_700_000_000,
                            hole=3 * 1024 * 1024 + 17),
        "shadow": Entry("link", target="/etc/shadow", uid=0, gid=0),
        "relative": Entry("link", target="dir with space/ünïcødé ☃.txt"),
    }


def vfat_tree(tag: str) -> Tree:
    return {"EFI": Entry("dir"), "EFI/boot.txt": Entry("file", f"vfat {tag}\n".encode())}


def write_tree(g, root: str, tree: Tree) -> None:
    """Write ``tree`` under ``root`` of a mounted filesystem (parents first)."""
    for path in sorted(tree, key=lambda p: p.count("/")):
        entry, where = tree[path], f"{root.rstrip('/')}/{path}"
        if entry.kind == "dir":
            if not g.is_dir(where):
                g.mkdir(where)
        elif entry.kind == "file":
            g.write(where, b"")
            if entry.hole:
                g.truncate_size(where, entry.hole)
                g.write_append(where, entry.data)
            else:
                g.write(where, entry.data)
        else:
            g.ln_s(entry.target, where)
    posix = g.vfs_type(_device_of(g, root)) != "vfat"
    for path in sorted(tree, key=lambda p: -p.count("/")):
        entry, where = tree[path], f"{root.rstrip('/')}/{path}"
        if posix:
            g.lchown(entry.uid, entry.gid, where)
            if entry.kind != "link":
                g.chmod(entry.mode, where)
            for name, value in entry.xattrs.items():
                g.lsetxattr(name, value.decode(), len(value), where)
        if entry.mtime is not None:
            g.utimens(where, entry.mtime, 0, entry.mtime, 0)


def _device_of(g, root: str) -> str:
    mounted = g.mountpoints()
    best = max((mp for mp in mounted.values() if root.startswith(mp)), key=len)
    return next(dev for dev, mp in mounted.items() if mp == best)


def remove_path(g, root: str, path: str) -> None:
    g.rm_rf(f"{root.rstrip('/')}/{path}")


def compare_tree(base: str, tree: Tree, posix: bool = True, exact_names: bool = True) -> None:
    """The files under ``base`` (a mount or a restored copy) are ``tree``."""
    for path, entry in tree.items():
        where = os.path.join(base, path)
        info = os.lstat(where)
        if entry.kind == "link":
            assert stat.S_ISLNK(info.st_mode), where
            assert os.readlink(where) == entry.target, where
        elif entry.kind == "dir":
            assert stat.S_ISDIR(info.st_mode), where
        else:
            assert stat.S_ISREG(info.st_mode), where
            with open(where, "rb") as handle:
                assert handle.read() == bytes(entry.hole) + entry.data, where
        if posix:
            assert (info.st_uid, info.st_gid) == (entry.uid, entry.gid), where
            if entry.kind != "link":
                assert stat.S_IMODE(info.st_mode) == entry.mode, (where, oct(info.st_mode))
            for name, value in entry.xattrs.items():
                assert os.getxattr(where, name, follow_symlinks=False) == value, where
        if entry.mtime is not None:
            assert abs(info.st_mtime - entry.mtime) <= 2, (where, info.st_mtime)
    if exact_names:
        present = set()
        for directory, dirs, files in os.walk(base):
            for name in dirs + files:
                present.add(os.path.relpath(os.path.join(directory, name), base))
        present = {path for path in present if not path.startswith("lost+found")}
        assert present == set(tree), (sorted(present - set(tree)), sorted(set(tree) - present))


def open_disks(paths: list[tuple[str, str]], readonly: bool = False):
    g = binding().GuestFS(python_return_dict=True)
    for path, fmt in paths:
        g.add_drive_opts(path, format=fmt, readonly=readonly)
    g.launch()
    return g
