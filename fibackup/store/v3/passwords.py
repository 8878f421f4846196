"""Where the passphrase of an encrypted store comes from: never the command line
itself, never a configuration value holding it.

In order: ``--password-file`` (the CLI installs it with :func:`use`), the
environment's ``FIBACKUP_PASSWORD_FILE``, the configuration file's
``[store] password_file`` or ``password_command`` (the CLI passes them to
:func:`use`), and last a prompt when stdin is a terminal.
"""
from __future__ import annotations

import getpass
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional

from fibackup.errors import StoreKeyError, UsageError
from fibackup.store.v3.keys import no_key_error

PASSWORD_FILE_ENV = "FIBACKUP_PASSWORD_FILE"


@dataclass
class Sources:
    password_file: Optional[str] = None
    """--password-file: wins over everything."""
    config_file: Optional[str] = None
    config_command: Optional[str] = None


_sources = Sources()


def use(sources: Sources) -> None:
    """Set the places to look (the CLI calls this once per run)."""
    global _sources
    _sources = sources


def passphrase(root: str, new: bool = False) -> bytes:
    """The passphrase for the store at ``root`` (``new``: for a key being made: a prompt
    asks twice)."""
    named = _sources.password_file or os.environ.get(PASSWORD_FILE_ENV) or _sources.config_file
    if named:
        return read_file(named)
    if _sources.config_command:
        return _from_command(_sources.config_command)
    if sys.stdin.isatty():
        return _prompt(root, new)
    raise no_key_error(root, "no passphrase was given" if not new else
                       "a new key needs a passphrase")


def given_file() -> Optional[str]:
    """``--password-file`` of this run, if any (a background process it starts gets it;
    the environment and the configuration it reads itself)."""
    return _sources.password_file


def unattended() -> bool:
    """Whether the passphrase comes from a file or a command (no prompt)."""
    return bool(_sources.password_file or os.environ.get(PASSWORD_FILE_ENV)
                or _sources.config_file or _sources.config_command)


def read_file(path: str) -> bytes:
    """A passphrase file's first line (its newline dropped)."""
    try:
        with open(path, "rb") as handle:
            text = handle.read()
    except OSError as error:
        raise UsageError(f"cannot read the password file {path} ({error.strerror})",
                         path=path) from None
    line = text.split(b"\n", 1)[0].rstrip(b"\r")
    if not line:
        raise UsageError(f"the password file {path} is empty", path=path)
    return line


def _from_command(command: str) -> bytes:
    try:
        done = subprocess.run(shlex.split(command), capture_output=True, check=False, timeout=60)
    except (OSError, ValueError, subprocess.TimeoutExpired) as error:
        raise StoreKeyError(f"password_command {command!r} could not run ({error})") from None
    line = done.stdout.split(b"\n", 1)[0].rstrip(b"\r")
    if done.returncode != 0 or not line:
        raise StoreKeyError(f"password_command {command!r} failed (exit {done.returncode}) or "
                            "printed no passphrase")
    return line


def prompt_new(root: str) -> bytes:
    """A new passphrase, typed twice (UsageError without a terminal)."""
    if not sys.stdin.isatty():
        raise UsageError("a new passphrase needs --new-password-file FILE (or a terminal)")
    return _prompt(root, True)


def _prompt(root: str, new: bool) -> bytes:
    first = getpass.getpass(f"passphrase for {root}: ").encode()
    if not first:
        raise StoreKeyError("an empty passphrase is not accepted")
    if new and getpass.getpass("the same passphrase again: ").encode() != first:
        raise StoreKeyError("the two passphrases differ; nothing was written")
    return first
