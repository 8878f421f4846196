"""The configuration files: parsing, strict validation, merging and precedence."""
from __future__ import annotations

import os

import pytest

from fibackup import config
from fibackup.config import SOURCE_DEFAULT, PruneSettings, load_config, parse
from fibackup.errors import EXIT_USAGE, ConfigError, UsageError

FULL = b"""
connect = "qemu+ssh://root@host/system"
backup_dir = "/backup/"

[snapshot]
quiesce = "fallback"
jobs = 4
bwlimit = "200M"
max_chain = 8
consolidate = "commit"

[consolidate]
method = "active"
timeout = 600

[restore]
jobs = 3
bwlimit = 500

[verify]
bwlimit = "1G"

[prune]
keep = 30
keep_daily = 7
keep_weekly = 4
"""


def write(directory, name: str, data: bytes) -> str:
    path = os.path.join(str(directory), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def values(path: str, data: bytes) -> dict[str, object]:
    return {name: setting.value for name, setting in parse(path, data).items()}


def test_every_key_is_read_and_normalised():
    assert values("/etc/fibackup.toml", FULL) == {
        "connect": "qemu+ssh://root@host/system", "backup_dir": "/backup",
        "snapshot.quiesce": "fallback", "snapshot.jobs": 4, "snapshot.bwlimit": "200M",
        "snapshot.max_chain": 8, "snapshot.consolidate": "commit",
        "consolidate.method": "active", "consolidate.timeout": 600,
        "restore.jobs": 3, "restore.bwlimit": "500", "verify.bwlimit": "1G",
        "prune.keep": 30, "prune.keep_daily": 7, "prune.keep_weekly": 4}


def test_dotted_keys_are_the_same_as_sections():
    assert values("/f", b'snapshot.jobs = 3\nprune = { keep = 2 }\n') == {
        "snapshot.jobs": 3, "prune.keep": 2}


def test_an_empty_file_sets_nothing():
    assert parse("/dev/null", b"") == {}


@pytest.mark.parametrize("text, names", [
    (b'conect = "qemu:///system"\n', ["/f:", "unknown key 'conect'", "connect, backup_dir",
                                       "[snapshot]"]),
    (b'[snapshots]\njobs = 2\n', ["unknown key 'snapshots'", "[snapshot]"]),
    (b'[snapshot]\njob = 2\n', ["unknown key 'job' in [snapshot]", "quiesce, jobs"]),
    (b'[prune]\nkeep_monthly = 2\n', ["unknown key 'keep_monthly' in [prune]"]),
    (b'[snapshot.extra]\njobs = 2\n', ["unknown key 'extra' in [snapshot]"]),
    (b'snapshot = 3\n', ["snapshot must be a section", "[snapshot]"]),
])
def test_unknown_keys_and_sections_are_refused(text, names):
    with pytest.raises(ConfigError) as caught:
        parse("/f", text)
    for name in names:
        assert name in str(caught.value)


@pytest.mark.parametrize("text, expected", [
    (b'connect = 3\n', 'connect = 3 is not valid; use a libvirt URI'),
    (b'connect = ""\n', 'connect = "" is not valid'),
    (b'backup_dir = "backup"\n', 'backup_dir = "backup" is not valid; use an absolute path'),
    (b'backup_dir = ["/a"]\n', 'backup_dir = ["/a"] is not valid'),
    (b'[snapshot]\nquiesce = true\n', '[snapshot] quiesce = true is not valid; use "no" or '
                                      '"require" or "fallback"'),
    (b'[snapshot]\njobs = 0\n', '[snapshot] jobs = 0 is not valid; use a whole number from 1 to 64'),
    (b'[snapshot]\njobs = 65\n', 'from 1 to 64'),
    (b'[snapshot]\njobs = "2"\n', '[snapshot] jobs = "2" is not valid'),
    (b'[snapshot]\njobs = true\n', '[snapshot] jobs = true is not valid'),
    (b'[snapshot]\njobs = 2.0\n', '[snapshot] jobs = 2.0 is not valid'),
    (b'[snapshot]\nbwlimit = "fast"\n', '[snapshot] bwlimit = "fast" is not valid; use a rate'),
    (b'[snapshot]\nbwlimit = "2K"\n', 'at least 64K'),
    (b'[snapshot]\nbwlimit = 0\n', '[snapshot] bwlimit = 0 is not valid'),
    (b'[snapshot]\nmax_chain = 1\n', '[snapshot] max_chain = 1 is not valid; use a whole number '
                                     'of at least 2'),
    (b'[snapshot]\nconsolidate = "merge"\n', 'use "commit" or "active" or "pull"'),
    (b'[consolidate]\nmethod = "Commit"\n', '[consolidate] method = "Commit" is not valid'),
    (b'[consolidate]\ntimeout = 0\n', 'a number of seconds greater than 0'),
    (b'[consolidate]\ntimeout = inf\n', 'timeout = inf is not valid'),
    (b'[consolidate]\ntimeout = "10m"\n', 'timeout = "10m" is not valid'),
    (b'[restore]\njobs = -1\n', '[restore] jobs = -1 is not valid'),
    (b'[verify]\nbwlimit = 1.5\n', '[verify] bwlimit = 1.5 is not valid'),
    (b'[prune]\nkeep = 0\n', '[prune] keep = 0 is not valid; use a whole number of at least 1'),
    (b'[prune]\nkeep_weekly = "4"\n', '[prune] keep_weekly = "4" is not valid'),
])
def test_wrong_types_and_values_name_file_key_and_fix(text, expected):
    with pytest.raises(ConfigError) as caught:
        parse("/etc/fibackup.toml", text)
    message = str(caught.value)
    assert message.startswith("/etc/fibackup.toml: ")
    assert expected in message


def test_malformed_toml_names_the_file_and_line():
    with pytest.raises(ConfigError) as caught:
        parse("/etc/fibackup.toml", b'connect = "qemu:///system"\njobs = \n')
    message = str(caught.value)
    assert message.startswith("/etc/fibackup.toml: not valid TOML")
    assert "line 2" in message


def test_a_key_given_twice_is_malformed():
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse("/f", b'[snapshot]\njobs = 2\njobs = 3\n')


def test_text_that_is_not_utf8_names_its_line():
    with pytest.raises(ConfigError, match=r"/f: line 3 is not UTF-8"):
        parse("/f", b'# a\n# b\nbackup_dir = "/b\xff"\n')


def test_config_error_exits_like_a_usage_error():
    assert ConfigError.exit_code == EXIT_USAGE


# -- files and merging ----------------------------------------------------------------


def test_default_files_are_etc_then_the_users(tmp_path):
    assert config.config_files({"HOME": "/home/ann"}) == [
        "/etc/fibackup.toml", "/home/ann/.config/fibackup/config.toml"]
    assert config.config_files({"HOME": "/home/ann", "XDG_CONFIG_HOME": "/xdg"}) == [
        "/etc/fibackup.toml", "/xdg/fibackup/config.toml"]
    # the XDG rule: a relative XDG_CONFIG_HOME is ignored
    assert config.config_files({"HOME": "/h", "XDG_CONFIG_HOME": "rel"})[1] == \
        "/h/.config/fibackup/config.toml"


def test_fibackup_config_names_the_only_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "mine.toml", b'backup_dir = "/b"\n')
    assert config.config_files({"FIBACKUP_CONFIG": "mine.toml", "HOME": "/h"}) == [
        str(tmp_path / "mine.toml")]
    loaded = load_config({"FIBACKUP_CONFIG": "mine.toml", "HOME": str(tmp_path)})
    assert loaded.files == [str(tmp_path / "mine.toml")]
    assert loaded.setting("backup_dir").source == str(tmp_path / "mine.toml")


def test_later_files_override_earlier_key_by_key(tmp_path, monkeypatch):
    system = write(tmp_path, "etc/fibackup.toml",
                   b'backup_dir = "/sys"\n[snapshot]\njobs = 4\nquiesce = "require"\n')
    user = write(tmp_path, "home/.config/fibackup/config.toml",
                 b'[snapshot]\nquiesce = "fallback"\n[prune]\nkeep = 5\n')
    monkeypatch.setattr(config, "SYSTEM_FILE", system)
    loaded = load_config({"HOME": str(tmp_path / "home")})
    assert loaded.files == [system, user]
    assert loaded.setting("backup_dir") == config.Setting("/sys", system)
    assert loaded.setting("snapshot.jobs") == config.Setting(4, system)
    assert loaded.setting("snapshot.quiesce") == config.Setting("fallback", user)
    assert loaded.setting("restore.jobs") == config.Setting(2, SOURCE_DEFAULT)
    assert loaded.prune() == PruneSettings(keep=5)


def test_missing_default_files_are_fine(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "SYSTEM_FILE", str(tmp_path / "none.toml"))
    loaded = load_config({"HOME": str(tmp_path / "nobody")})
    assert loaded.files == [] and len(loaded.searched) == 2
    assert loaded.value("snapshot.quiesce") == "no"


def test_a_missing_named_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="FIBACKUP_CONFIG names .*missing.toml, which does "
                                          "not exist.*FIBACKUP_CONFIG=/dev/null"):
        load_config({"FIBACKUP_CONFIG": str(tmp_path / "missing.toml")})


def test_dev_null_reads_no_settings():
    loaded = load_config({"FIBACKUP_CONFIG": "/dev/null"})
    assert loaded.files == ["/dev/null"] and loaded.settings == {}


def test_an_unreadable_file_is_an_error_naming_it(tmp_path):
    path = write(tmp_path, "secret.toml", b'backup_dir = "/b"\n')
    os.chmod(path, 0)
    if os.access(path, os.R_OK):  # root reads anything: use a directory instead
        path = str(tmp_path)
        with pytest.raises(ConfigError, match=f"configuration file {path} is a directory"):
            load_config({"FIBACKUP_CONFIG": path})
        return
    with pytest.raises(ConfigError, match=f"cannot read configuration file {path}"):
        load_config({"FIBACKUP_CONFIG": path})


def test_an_error_in_the_user_file_names_it(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "SYSTEM_FILE", write(tmp_path, "etc.toml", b'backup_dir = "/b"\n'))
    user = write(tmp_path, "xdg/fibackup/config.toml", b'[verify]\nbwlimit = "x"\n')
    with pytest.raises(ConfigError, match=f"^{user}: \\[verify\\] bwlimit"):
        load_config({"XDG_CONFIG_HOME": str(tmp_path / "xdg")})


# -- precedence -----------------------------------------------------------------------


def loaded_from(tmp_path, text: bytes, **environ: str) -> config.Config:
    path = write(tmp_path, "c.toml", text)
    return load_config({"FIBACKUP_CONFIG": path, **environ})


def test_connect_flag_beats_file_beats_environment_beats_default(tmp_path):
    env = {"LIBVIRT_DEFAULT_URI": "qemu:///session"}
    with_file = loaded_from(tmp_path, b'connect = "test:///default"\n', **env)
    assert with_file.connect_uri("qemu:///flag") == "qemu:///flag"
    assert with_file.connect_uri(None) == "test:///default"
    assert with_file.setting("connect").source.endswith("c.toml")
    without = loaded_from(tmp_path, b"", **env)
    assert without.connect_uri(None) == "qemu:///session"
    assert without.setting("connect").source == "LIBVIRT_DEFAULT_URI"
    bare = loaded_from(tmp_path, b"")
    assert bare.setting("connect") == config.Setting("qemu:///system", SOURCE_DEFAULT)


def test_a_flag_beats_the_file_and_the_file_beats_the_default(tmp_path):
    loaded = loaded_from(tmp_path, b'[restore]\njobs = 6\n[consolidate]\ntimeout = 9.5\n')
    assert loaded.pick("restore.jobs", 1) == 1
    assert loaded.pick("restore.jobs", None) == 6
    assert loaded.pick("snapshot.jobs", None) == 2
    assert loaded.pick("consolidate.timeout", None) == 9.5
    assert loaded.pick("consolidate.method", None) == "commit"


def test_backup_dir_from_flag_or_file_or_a_usage_error(tmp_path):
    loaded = loaded_from(tmp_path, b'backup_dir = "/srv/backup"\n')
    assert loaded.backup_dir("/flag") == "/flag"
    assert loaded.backup_dir(None) == "/srv/backup"
    with pytest.raises(UsageError, match="-b DIR, or set backup_dir"):
        loaded_from(tmp_path, b"").backup_dir(None)


def test_show_lists_every_setting_with_its_source(tmp_path):
    loaded = loaded_from(tmp_path, b'[snapshot]\nbwlimit = "200M"\n')
    document = loaded.to_json()
    assert document["files"] == [{"path": str(tmp_path / "c.toml"), "read": True}]
    assert document["settings"]["snapshot"]["bwlimit"] == {
        "value": "200M", "source": str(tmp_path / "c.toml")}
    assert document["settings"]["verify"]["bwlimit"] == {"value": None, "source": "default"}
    assert document["settings"]["connect"]["source"] == "default"
    assert set(loaded.effective()) >= {"connect", "backup_dir", "snapshot.quiesce",
                                       "prune.keep_weekly"}
    assert loaded.shown("verify.bwlimit") == "unlimited"
    assert loaded.shown("snapshot.bwlimit") == "200M"


def test_vocabularies_match_the_commands():
    from fibackup.commands.consolidate import METHODS
    from fibackup.commands.parallel import DEFAULT_JOBS
    assert config.CONSOLIDATION_METHODS == METHODS
    assert config.DEFAULT_JOBS == DEFAULT_JOBS


def test_the_documented_example_is_a_valid_file():
    page = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "CONFIG.md")
    with open(page, "rb") as handle:
        text = handle.read()
    example = text.split(b"```toml\n", 1)[1].split(b"```", 1)[0]
    assert len(parse("docs/CONFIG.md", example)) == sum(len(keys) for keys in config.SCHEMA.values())
