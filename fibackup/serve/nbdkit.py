"""nbdkit as the NBD server of a restore point's disk (a thin adapter).

``served(disk, directory)`` starts ``nbdkit --foreground --readonly --unix SOCKET
--exit-with-parent python fibackup/serve/nbdkit_plugin.py ...`` as a child of this
process and yields the socket once nbdkit listens (it writes its pid file then);
it is stopped on the way out, whatever happens, and dies with this process if that
is killed.  The socket lives in ``directory``, which only root can enter (mode 0700).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import site
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import fibackup
from fibackup.errors import ServeError
from fibackup.host.state import runtime_dir
from fibackup.qemu.img import nbd_uri
from fibackup.serve.source import DEFAULT_CACHE_BYTES, ServedDisk

NBDKIT = "nbdkit"
PLUGIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nbdkit_plugin.py")
INSTALL_HINT = "apt-get install nbdkit nbdkit-plugin-python (scripts/setup-host.sh does)"
START_TIMEOUT = 120.0


@dataclass(frozen=True)
class Server:
    socket: str
    pid: int
    log: str

    @property
    def uri(self) -> str:
        return nbd_uri(self.socket)


def plugin_path() -> str:
    """The directories nbdkit's embedded Python needs: fibackup's package root and this
    interpreter's site-packages (where zstandard, cryptography and boto3 are)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(fibackup.__file__)))
    entries = [root, *site.getsitepackages()]
    user = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    if user and os.path.isdir(user):
        entries.append(user)
    return ":".join(entry for entry in entries if os.path.isdir(entry))


def arguments(disk: ServedDisk, socket: str, pidfile: str,
              cache_bytes: int = DEFAULT_CACHE_BYTES,
              password_file: Optional[str] = None, daemon_log: Optional[str] = None) -> list[str]:
    """nbdkit's command line: in the foreground, dying with the process that starts it;
    with ``daemon_log``, a daemon that outlives it (the long-lived server of instant
    recovery), whose plugin appends its lines to that file (a daemon's stderr is
    /dev/null)."""
    mode = ["--log=stderr"] if daemon_log else ["--foreground", "--exit-with-parent"]
    args = [NBDKIT, *mode, "--readonly", "--unix", socket,
            "--pidfile", pidfile, "python", PLUGIN, f"path={plugin_path()}",
            f"store={disk.location}", f"index={disk.index_id}", f"size={disk.virtual_size}",
            f"cache={cache_bytes}"]
    if password_file:
        args.append(f"password_file={os.path.abspath(password_file)}")
    if daemon_log:
        args.append(f"log={daemon_log}")
    return args


def sockets_dir() -> str:
    """A new directory for a run's sockets, that only root can enter (mode 0700)."""
    base = runtime_dir()
    os.makedirs(base, mode=0o755, exist_ok=True)
    return tempfile.mkdtemp(prefix="nbd-", dir=base)


@contextlib.contextmanager
def served(disk: ServedDisk, directory: str, name: str,
           cache_bytes: int = DEFAULT_CACHE_BYTES,
           password_file: Optional[str] = None) -> Iterator[Server]:
    """Serve ``disk`` on ``directory``/``name``.sock for the duration of the ``with``
    (``directory``: from :func:`sockets_dir`)."""
    socket = os.path.join(directory, f"{name}.sock")
    pidfile = os.path.join(directory, f"{name}.pid")
    log = os.path.join(directory, f"{name}.log")
    for stale in (socket, pidfile):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
    server = start_process(arguments(disk, socket, pidfile, cache_bytes, password_file), pidfile, log)
    try:
        yield Server(socket, server.pid, log)
    finally:
        stop(server)
        for leftover in (socket, pidfile):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


def start_daemon(args: list[str], pidfile: str, log: str) -> int:
    """Start nbdkit as a daemon (``arguments(daemon_log=...)``): it forks into the
    background once it listens, in its own session; the daemon's pid."""
    if shutil.which(NBDKIT) is None:
        raise ServeError(f"nbdkit is not installed: {INSTALL_HINT}")
    with open(log, "ab") as output:
        starter = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                                   env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
                                   start_new_session=True)
    try:
        code = starter.wait(START_TIMEOUT)
    except subprocess.TimeoutExpired:
        stop(starter)
        raise ServeError(f"nbdkit did not listen within {START_TIMEOUT:.0f} s (its log: "
                         f"{log})") from None
    if code != 0:
        raise ServeError(f"nbdkit did not start: {_last_words(log)}")
    deadline = time.monotonic() + 10.0              # the daemon writes it after the fork
    while not _ready(pidfile):
        if time.monotonic() > deadline:
            raise ServeError(f"nbdkit wrote no pid file {pidfile} (its log: {log})")
        time.sleep(0.01)
    with open(pidfile, "rb") as handle:
        return int(handle.read().strip())


def start_process(args: list[str], pidfile: str, log: str) -> "subprocess.Popen[bytes]":
    """Start nbdkit in the foreground, as a child, and wait until it listens."""
    if shutil.which(NBDKIT) is None:
        raise ServeError(f"nbdkit is not installed: {INSTALL_HINT}")
    with open(log, "wb") as output:
        server = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                                  env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    deadline = time.monotonic() + START_TIMEOUT
    while not _ready(pidfile):
        if server.poll() is not None:
            raise ServeError(f"nbdkit did not start: {_last_words(log)}")
        if time.monotonic() > deadline:
            stop(server)
            raise ServeError(f"nbdkit did not listen within {START_TIMEOUT:.0f} s (its log: "
                             f"{log})")
        time.sleep(0.01)
    return server


def _ready(pidfile: str) -> bool:
    try:
        with open(pidfile, "rb") as handle:
            return bool(handle.read().strip())
    except FileNotFoundError:
        return False


def _last_words(log: str) -> str:
    """The fibackup line of the plugin's failure, else nbdkit's last line, with a hint."""
    with open(log, "rb") as handle:
        lines = [line.strip() for line in handle.read().decode(errors="replace").splitlines()
                 if line.strip()]
    ours = [line for line in lines if "fibackup: " in line]
    if ours:
        return ours[-1].split("fibackup: ", 1)[1]
    if any("python" in line and ("cannot open" in line or "not found" in line)
           for line in lines):
        return f"its Python plugin is missing: {INSTALL_HINT}"
    return lines[-1] if lines else "no output"


def stop(server: "subprocess.Popen[bytes]") -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

