"""The configuration files: defaults for the command line's options.

Files are read in order, a later one overriding an earlier one key by key:
``/etc/fibackup.toml``, then the user's ``$XDG_CONFIG_HOME/fibackup/config.toml``
(``~/.config/fibackup/config.toml`` by default).  ``FIBACKUP_CONFIG=/path`` names the
one file to read instead of both (``/dev/null``: none).  A missing file is no
error; an unreadable or invalid one is, naming the file and the line or key.

Each setting comes from, first to last: the command-line flag, the configuration
files, the environment (``LIBVIRT_DEFAULT_URI``, for ``connect`` only), the
built-in default.  Loading needs no libvirt and imports nothing heavy.
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from fibackup.errors import ConfigError, UsageError
from fibackup.model.states import METHODS
from fibackup.store.location import SCHEME, is_url

SYSTEM_FILE = "/etc/fibackup.toml"
CONFIG_ENV = "FIBACKUP_CONFIG"
URI_ENV = "LIBVIRT_DEFAULT_URI"
DEFAULT_URI = "qemu:///system"
DEFAULT_JOBS = 2
"""fibackup.commands.parallel.DEFAULT_JOBS (a unit test keeps them equal)."""
MAX_JOBS = 64
CONSOLIDATION_METHODS = METHODS
"""The consolidation methods the configuration file accepts: model.states.METHODS."""
QUIESCE_MODES = ("no", "require", "fallback")

SOURCE_DEFAULT = "default"
"""A setting's source: this, ``LIBVIRT_DEFAULT_URI``, or the absolute path of a file."""

Check = Callable[[Any], Any]


@dataclass(frozen=True)
class Key:
    check: Check
    """Returns the value to use, or raises ValueError naming what the key accepts."""
    default: Any = None
    unset: str = "-"
    """How ``config show`` prints the value None."""
    off: Any = None
    """A flag value that turns the setting off whatever the files say (``--consolidate
    none``, ``--max-chain 0``): :meth:`Config.pick` gives None for it."""


@dataclass(frozen=True)
class Setting:
    value: Any
    source: str


@dataclass(frozen=True)
class PruneSettings:
    """How many restore points ``prune`` keeps (None: no such rule)."""

    keep: Optional[int] = None
    keep_daily: Optional[int] = None
    keep_weekly: Optional[int] = None


# -- value checks -------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _whole(low: int, high: Optional[int] = None) -> Check:
    wanted = (f"a whole number from {low} to {high}" if high is not None
              else f"a whole number of at least {low}")

    def check(value: Any) -> int:
        if not _is_int(value) or value < low or (high is not None and value > high):
            raise ValueError(wanted)
        number: int = value
        return number
    return check


def _choice(*choices: str) -> Check:
    wanted = " or ".join(f'"{choice}"' for choice in choices)

    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(wanted)
        choice: str = value
        return choice
    return check


def _uri(value: Any) -> str:
    if not isinstance(value, str) or not value or value != value.strip() or " " in value:
        raise ValueError('a libvirt URI such as "qemu:///system"')
    return value


def _absolute_path(value: Any) -> str:
    if isinstance(value, str) and is_url(value) and len(value) > len(SCHEME):
        return value                        # object storage (fibackup/store/s3/)
    if not isinstance(value, str) or not os.path.isabs(value):
        raise ValueError('an absolute path such as "/backup" (or "s3://BUCKET/PREFIX")')
    return os.path.normpath(value)


def _url(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")) \
            or " " in value:
        raise ValueError('an http(s) URL such as "https://s3.example.net"')
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value or value != value.strip():
        raise ValueError("a non-empty name")
    return value


def _rate(value: Any) -> str:
    from fibackup.rates import parse_rate
    text = str(value) if _is_int(value) else value
    if isinstance(text, str):
        try:
            parse_rate(text)
            return text
        except UsageError:
            pass
    raise ValueError('a rate of at least 64K per second such as "200M" (MiB/s), "1G" or '
                     '"500K" (a plain number is MiB/s)')


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
        raise ValueError("a number of seconds greater than 0")
    return value


def _store_format(value: Any) -> int:
    if _is_int(value) and value in (1, 3):
        return int(value)
    raise ValueError("1 (layer copies, readable by fibackup before 0.3) or 3 (chunks: "
                     "compressed, deduplicated, optionally encrypted)")


def _compression(value: Any) -> str:
    from fibackup.store.v3.codec import Compression
    if isinstance(value, str):
        try:
            return Compression.parse(value).spec
        except UsageError:
            pass
    raise ValueError('"zstd", "zstd:LEVEL" (1-19) or "none"')


def _chunk_size(value: Any) -> str:
    from fibackup.store.v3.settings import parse_size
    if isinstance(value, str):
        try:
            parse_size(value)
            return value
        except UsageError:
            pass
    raise ValueError('a power of two from "64K" to "64M", such as "4M"')


def _local_file(value: Any) -> str:
    if isinstance(value, str) and os.path.isabs(value):
        return os.path.normpath(value)
    raise ValueError('an absolute path such as "/etc/fibackup/passphrase"')


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError("true or false")


def _command(value: Any) -> str:
    if isinstance(value, str) and value.strip():
        return value
    raise ValueError('a command line such as "pass show fibackup"')


_JOBS = Key(_whole(1, MAX_JOBS), DEFAULT_JOBS)
_BWLIMIT = Key(_rate, unset="unlimited")
_KEEP = Key(_whole(1), unset="no rule")

SCHEMA: dict[str, dict[str, Key]] = {
    "": {"connect": Key(_uri, DEFAULT_URI),
         "backup_dir": Key(_absolute_path, unset="none (pass -b)")},
    "snapshot": {"quiesce": Key(_choice(*QUIESCE_MODES), "no"),
                 "jobs": _JOBS, "bwlimit": _BWLIMIT,
                 "max_chain": Key(_whole(2), unset="no limit", off=0),
                 "consolidate": Key(_choice(*CONSOLIDATION_METHODS), unset="no", off="none")},
    "consolidate": {"method": Key(_choice(*CONSOLIDATION_METHODS), "commit"),
                    "timeout": Key(_seconds, unset="wait")},
    "restore": {"jobs": _JOBS, "bwlimit": _BWLIMIT},
    "verify": {"bwlimit": _BWLIMIT},
    "prune": {"keep": _KEEP, "keep_daily": _KEEP, "keep_weekly": _KEEP},
    "store": {"format": Key(_store_format, 3),
              "compression": Key(_compression, "zstd:2"),
              "encrypt": Key(_flag, False),
              "chunk_size": Key(_chunk_size, "4M"),
              "password_file": Key(_local_file, unset="none"),
              "password_command": Key(_command, unset="none")},
    "s3": {"endpoint_url": Key(_url, unset="boto3's (AWS_ENDPOINT_URL, else AWS)"),
           "profile": Key(_name, unset="boto3's (AWS_PROFILE, else default)"),
           "region": Key(_name, unset="boto3's (AWS_DEFAULT_REGION...)")},
}
"""Section ("" for the top level) -> key -> its check and default."""


def _dotted(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def _label(section: str, key: str) -> str:
    return f"[{section}] {key}" if section else key


def _schema_key(name: str) -> Key:
    section, _, key = name.rpartition(".")
    return SCHEMA[section][key]


# -- reading ------------------------------------------------------------------------


def config_files(environ: Mapping[str, str]) -> list[str]:
    """The files to read, in order: FIBACKUP_CONFIG's alone, or /etc's then the user's."""
    named = environ.get(CONFIG_ENV)
    if named:
        return [os.path.abspath(named)]
    base = environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):
        home = environ.get("HOME") or os.path.expanduser("~")
        base = os.path.join(home, ".config")
    return [SYSTEM_FILE, os.path.join(base, "fibackup", "config.toml")]


def _read(path: str, must_exist: bool) -> Optional[bytes]:
    """The file's bytes; None when it does not exist (and need not)."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except (FileNotFoundError, NotADirectoryError):
        if not must_exist:
            return None
        raise ConfigError(f"{CONFIG_ENV} names {path}, which does not exist; create it, or "
                          f"set {CONFIG_ENV}=/dev/null to read no configuration file")
    except IsADirectoryError:
        raise ConfigError(f"configuration file {path} is a directory; remove it or put the "
                          "settings in a file of that name")
    except OSError as error:
        raise ConfigError(f"cannot read configuration file {path} ({error.strerror}); make it "
                          f"readable, or name another file with {CONFIG_ENV}=/path")


def _decode(path: str, data: bytes) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python < 3.11 (pyproject adds tomli)
        import tomli as tomllib
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line} is not UTF-8 text; a configuration file is "
                          "TOML, which is UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}; fix that line (docs/CONFIG.md has an "
                          "example)") from None


def _shown(value: Any) -> str:
    """A value roughly as TOML writes it, for messages."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # inf, -inf, nan: as TOML writes them
    try:
        return json.dumps(value)
    except TypeError:  # dates and times
        return str(value)


def _names(names: Any) -> str:
    return ", ".join(names)


def parse(path: str, data: bytes) -> dict[str, Setting]:
    """The settings a file gives (dotted keys), every key and value checked."""
    document = _decode(path, data)
    sections = [name for name in SCHEMA if name]
    settings: dict[str, Setting] = {}
    for name, value in document.items():
        if name in sections:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: {name} must be a section: write [{name}] on a line "
                                  "of its own and its keys below it")
            settings.update(_parse_section(path, name, value))
        elif name in SCHEMA[""]:
            settings[name] = _checked(path, "", name, value)
        else:
            raise ConfigError(f"{path}: unknown key '{name}'; the top-level keys are "
                              f"{_names(SCHEMA[''])} and the sections "
                              f"{_names(f'[{s}]' for s in sections)} (docs/CONFIG.md)")
    return settings


def _parse_section(path: str, section: str, table: dict[str, Any]) -> dict[str, Setting]:
    known = SCHEMA[section]
    settings = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{path}: unknown key '{key}' in [{section}]; the keys there are "
                              f"{_names(known)} (docs/CONFIG.md)")
        settings[_dotted(section, key)] = _checked(path, section, key, value)
    return settings


def _checked(path: str, section: str, key: str, value: Any) -> Setting:
    try:
        return Setting(SCHEMA[section][key].check(value), path)
    except ValueError as wanted:
        raise ConfigError(f"{path}: {_label(section, key)} = {_shown(value)} is not valid; "
                          f"use {wanted}") from None


def load_config(environ: Optional[Mapping[str, str]] = None) -> "Config":
    """Read and merge the configuration files (see the module's description)."""
    environ = os.environ if environ is None else environ
    explicit = bool(environ.get(CONFIG_ENV))
    files, settings = [], {}
    paths = config_files(environ)
    for path in paths:
        data = _read(path, must_exist=explicit)
        if data is not None:
            files.append(path)
            settings.update(parse(path, data))
    return Config(searched=paths, files=files, settings=settings,
                  environment_uri=environ.get(URI_ENV) or None)


# -- the effective settings ---------------------------------------------------------


@dataclass(frozen=True)
class Config:
    searched: list[str]
    """Every file looked for, in order."""
    files: list[str]
    """The files read (the others do not exist)."""
    settings: dict[str, Setting]
    """What the files give, by dotted key (``snapshot.jobs``)."""
    environment_uri: Optional[str] = None

    def setting(self, name: str) -> Setting:
        """The value of a dotted key and where it comes from, flags aside."""
        key = _schema_key(name)
        if name in self.settings:
            return self.settings[name]
        if name == "connect" and self.environment_uri:
            return Setting(self.environment_uri, URI_ENV)
        return Setting(key.default, SOURCE_DEFAULT)

    def value(self, name: str) -> Any:
        return self.setting(name).value

    def pick(self, name: str, flag: Any) -> Any:
        """The one place of the precedence: the command-line value when it was given (not
        None), else the files', else the environment's, else the default.  A flag value
        that means off (the key's ``off``) gives None."""
        if flag is None:
            return self.value(name)
        off = _schema_key(name).off
        return None if off is not None and flag == off else flag

    def connect_uri(self, flag: Optional[str]) -> str:
        uri: str = self.pick("connect", flag)
        return uri

    def backup_dir(self, flag: Optional[str]) -> str:
        """-b, else the file's backup_dir; neither is a usage error."""
        chosen: Optional[str] = self.pick("backup_dir", flag)
        if chosen is None:
            raise UsageError("name the backup directory with -b DIR, or set backup_dir in the "
                             "configuration file ('fibackup config show' lists the files)")
        return chosen

    def prune(self) -> PruneSettings:
        return PruneSettings(keep=self.value("prune.keep"),
                             keep_daily=self.value("prune.keep_daily"),
                             keep_weekly=self.value("prune.keep_weekly"))

    def prune_rules(self, flags: PruneSettings) -> PruneSettings:
        """The rules given on the command line; when none is, all of the files' [prune]
        rules (a rule on the command line replaces every rule of the files)."""
        given = (flags.keep, flags.keep_daily, flags.keep_weekly)
        return flags if any(rule is not None for rule in given) else self.prune()

    def effective(self) -> dict[str, Setting]:
        """Every setting, in the schema's order, by dotted key."""
        return {_dotted(section, key): self.setting(_dotted(section, key))
                for section, keys in SCHEMA.items() for key in keys}

    def shown(self, name: str) -> str:
        """A setting's value as ``config show`` prints it."""
        value = self.value(name)
        return _schema_key(name).unset if value is None else str(value)

    def to_json(self) -> dict[str, Any]:
        settings: dict[str, Any] = {}
        for name, setting in self.effective().items():
            section, _, key = name.rpartition(".")
            table = settings.setdefault(section, {}) if section else settings
            table[key] = {"value": setting.value, "source": setting.source}
        return {"files": [{"path": path, "read": path in self.files} for path in self.searched],
                "settings": settings}
