"""Read access for the QEMU user to exactly the files it needs, with POSIX ACLs.

The backup directory is root's (directories 0700, files 0600).  A domain that
runs from stored layers (instant recovery) needs QEMU, which runs as the user
of ``/etc/libvirt/qemu.conf`` (``libvirt-qemu`` on Debian), to read those
layers and to search the directories above them.  Ownership and modes are
never changed: a named ACL entry is added (``setfacl -m u:USER:r``) and later
removed again, leaving the file as it was (``setfacl -b`` when no other
extended entry is left).  ``setfacl -P`` never follows a symbolic link, and
callers check that every path is a real file or directory first.
"""
from __future__ import annotations

import grp
import os
import pwd
import re
import stat
import subprocess
from dataclasses import dataclass
from typing import Optional, Sequence

from fibackup.errors import AccessGrantError

QEMU_CONF = "/etc/libvirt/qemu.conf"
QEMU_USERS = ("libvirt-qemu", "qemu")
"""Who QEMU runs as when qemu.conf does not say (Debian's, then Fedora's build default)."""
_USER_LINE = re.compile(r'^\s*user\s*=\s*"([^"]*)"\s*(#.*)?$')


@dataclass(frozen=True)
class Account:
    """The user QEMU runs as, and the groups it runs with."""

    name: str
    uid: int
    gids: frozenset[int]


def configured_user(conf_text: str) -> Optional[str]:
    """The ``user = "..."`` setting of a qemu.conf text (the last one wins), if any."""
    found = None
    for line in conf_text.splitlines():
        match = _USER_LINE.match(line)
        if match:
            found = match.group(1)
    return found


def qemu_account(conf_path: str = QEMU_CONF) -> Optional[Account]:
    """The account QEMU runs as; None when it runs as root (nothing to grant)."""
    try:
        with open(conf_path, encoding="utf-8", errors="replace") as handle:
            wanted = configured_user(handle.read())
    except OSError:
        wanted = None
    candidates = [wanted] if wanted else list(QEMU_USERS)
    for name in candidates:
        entry = _lookup(name)
        if entry is not None:
            if entry.pw_uid == 0:
                return None
            groups = {entry.pw_gid} | {item.gr_gid for item in grp.getgrall()
                                       if entry.pw_name in item.gr_mem}
            return Account(entry.pw_name, entry.pw_uid, frozenset(groups))
    raise AccessGrantError(
        f"cannot tell which user QEMU runs as (no user {' or '.join(candidates)} on this "
        f"host); set 'user' in {conf_path}")


def account_named(name: str) -> Account:
    """The account a record names (whoever QEMU runs as now)."""
    entry = _lookup(name)
    if entry is None:
        raise AccessGrantError(f"user {name}, whom fibackup granted access to stored layers, "
                               "no longer exists; remove its ACL entries by hand (getfacl)")
    return Account(entry.pw_name, entry.pw_uid, frozenset({entry.pw_gid}))


def _lookup(name: str) -> Optional[pwd.struct_passwd]:
    try:
        return pwd.getpwuid(int(name.lstrip("+"))) if name.lstrip("+").isdigit() \
            else pwd.getpwnam(name)
    except KeyError:
        return None


def mode_allows(info: os.stat_result, account: Account, perm: str) -> bool:
    """Whether the mode bits alone give ``account`` ``perm`` (``r`` or ``x``)."""
    shift = {"r": 2, "x": 0}[perm]
    if info.st_uid == account.uid:
        return bool((info.st_mode >> 6) & (1 << shift))
    if info.st_gid in account.gids:
        return bool((info.st_mode >> 3) & (1 << shift))
    return bool(info.st_mode & (1 << shift))


def unreachable(path: str, account: Account) -> Optional[str]:
    """The first directory from ``path`` up to ``/`` that ``account`` cannot search."""
    current = os.path.abspath(path)
    while True:
        if not mode_allows(os.stat(current), account, "x") and \
                not entry_allows(current, account, "x"):
            return current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def require_real(path: str, perm: str) -> os.stat_result:
    """``lstat`` of ``path``, which must be a real directory (``x``) or regular file
    (``r``), never a link."""
    info = os.lstat(path)
    kind_ok = stat.S_ISDIR(info.st_mode) if perm == "x" else stat.S_ISREG(info.st_mode)
    if not kind_ok:
        what = "directory" if perm == "x" else "regular file"
        raise AccessGrantError(f"{path} is not a real {what} (a link?); refusing to let QEMU "
                               "reach it")
    return info


def needs_grant(path: str, account: Account, perm: str) -> bool:
    """Whether ``path`` (see ``require_real``) needs an ACL entry for ``account`` to
    have ``perm`` on it."""
    return not mode_allows(require_real(path, perm), account, perm)


def has_entry(path: str, account: Account) -> bool:
    """Whether ``path``'s ACL has a named entry for ``account``."""
    return any(line.startswith(f"user:{account.uid}:") for line in _entries(path))


def entry_allows(path: str, account: Account, perm: str) -> bool:
    """Whether a named ACL entry (within the mask) gives ``account`` ``perm``."""
    entries = {line.rpartition(":")[0]: line.rpartition(":")[2] for line in _entries(path)}
    mine = entries.get(f"user:{account.uid}", "")
    return perm in mine and perm in entries.get("mask:", perm)


def grant(path: str, account: Account, perm: str) -> None:
    """Add ``user:ACCOUNT:perm`` to ``path``'s ACL (never following a link)."""
    _setfacl(["-m", f"u:{account.uid}:{perm}", path], path)


def revoke(path: str, account: Account) -> None:
    """Remove ``account``'s entry; with no other extended entry left, the file gets back
    exactly its plain mode (no ACL at all)."""
    if not os.path.lexists(path) or not has_entry(path, account):
        return
    _setfacl(["-x", f"u:{account.uid}", path], path)
    if not any(_is_extended(line) for line in _entries(path)):
        _setfacl(["-b", path], path)


def _is_extended(line: str) -> bool:
    tag, _sep, rest = line.partition(":")
    qualifier = rest.partition(":")[0]
    return tag in ("user", "group") and qualifier != ""


def _entries(path: str) -> list[str]:
    """The ACL of ``path``, one ``tag:qualifier:perms`` a line, numeric ids."""
    output = _tool(["getfacl", "-P", "-c", "-n", "-p", path], path)
    return [line.strip() for line in output.splitlines() if line.strip()]


def _setfacl(args: Sequence[str], path: str) -> None:
    _tool(["setfacl", "-P", *args], path)


def _tool(args: Sequence[str], path: str) -> str:
    try:
        completed = subprocess.run(list(args), capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise AccessGrantError(f"{args[0]} is not installed; instant recovery grants QEMU "
                               "read access with POSIX ACLs: install the Debian package "
                               "'acl'") from None
    if completed.returncode != 0:
        detail = (completed.stderr or completed.stdout).strip().splitlines()
        raise AccessGrantError(
            f"{args[0]} failed on {path}: {detail[-1] if detail else completed.returncode} "
            "(does the filesystem support POSIX ACLs? mount it with 'acl', or restore with "
            "a full copy instead of --instant)")
    return completed.stdout
