"""fibackup's nbdkit plugin: serves one disk of a format-3 restore point read-only as a
raw disk (nbdkit-python-plugin(3), API version 2).

nbdkit loads this file with the Python it embeds (Debian's libpython), not the venv's
interpreter: ``path=`` names the directories to put first on ``sys.path`` (fibackup's
package root and the venv's site-packages, as the process that starts nbdkit has
them).  The rest of the parameters (fibackup/serve/nbdkit.py builds them)::

    store=LOCATION index=HEX size=BYTES [cache=BYTES] [password_file=PATH] [log=PATH]

The store's passphrase and S3 credentials come from the configuration file and the
environment, as for every fibackup command (never a prompt).  Every chunk is checked
against its id before any byte of it is served; a damaged chunk is an EIO for that
read and one line on stderr (and in ``log=``, for a daemon) naming the chunk.
"""
from __future__ import annotations

import builtins
import errno
import site
import sys
from typing import Any, Optional

try:
    import nbdkit                                  # only inside nbdkit
except ImportError:                                # imported by a test or a tool
    nbdkit = None

API_VERSION = 2

_params: dict[str, str] = {}
_source: Optional[Any] = None


def _say(line: str) -> None:
    """One line on stderr and, for a daemon (whose stderr is /dev/null), in ``log=``."""
    print(line, file=sys.stderr, flush=True)
    if "log" in _params:
        import time
        with builtins.open(_params["log"], "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}\n")


def thread_model() -> int:
    return int(nbdkit.THREAD_MODEL_PARALLEL)


def config(key: str, value: str) -> None:
    if key == "path":
        for entry in reversed([part for part in value.split(":") if part]):
            if entry not in sys.path:
                site.addsitedir(entry)              # .pth files (editable installs) too
                sys.path.remove(entry)
                sys.path.insert(0, entry)
        return
    if key not in ("store", "index", "size", "cache", "password_file", "log"):
        raise ValueError(f"fibackup plugin: unknown parameter {key}")
    _params[key] = value


def config_complete() -> None:
    global _source
    missing = [key for key in ("store", "index", "size") if key not in _params]
    if missing:
        raise ValueError(f"fibackup plugin: missing {', '.join(missing)}=")
    from fibackup.config import load_config
    from fibackup.errors import FibackupError
    from fibackup.serve.source import DEFAULT_CACHE_BYTES, ServedDisk, open_source
    from fibackup.store.v3 import passwords
    try:
        settings = load_config()
        passwords.use(passwords.Sources(password_file=_params.get("password_file"),
                                        config_file=settings.value("store.password_file"),
                                        config_command=settings.value("store.password_command")))
        disk = ServedDisk(_params["store"], _params["index"], int(_params["size"]))
        _source = open_source(disk, int(_params.get("cache", DEFAULT_CACHE_BYTES)))
    except FibackupError as error:
        _say(f"fibackup: {error}")
        raise


def open(readonly: bool) -> int:                   # noqa: A001 - nbdkit's callback name
    return 1


def get_size(handle: int) -> int:
    assert _source is not None
    return int(_source.size)


def can_write(handle: int) -> bool:
    return False


def can_multi_conn(handle: int) -> bool:
    return True                                   # read-only: every connection sees the same


def can_cache(handle: int) -> int:
    return int(nbdkit.CACHE_NONE)


def pread(handle: int, buf: Any, offset: int, flags: int) -> None:
    assert _source is not None
    from fibackup.errors import FibackupError
    try:
        buf[:] = _source.read(offset, len(buf))
    except FibackupError as error:
        _say(f"fibackup: refused a read of {len(buf)} bytes at {offset}: {error}")
        nbdkit.set_error(errno.EIO)
        raise
