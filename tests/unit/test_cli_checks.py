"""The command line's checks, where the thin CLI leaves them: flag contradictions on the
commands' options classes, flag precedence in fibackup/config.py (no libvirt needed)."""
from __future__ import annotations

import pytest

from fibackup.commands.instant import InstantOptions
from fibackup.commands.restore import RestoreOptions
from fibackup.commands.snapshot import SnapshotOptions
from fibackup.commands.verify import check_selection
from fibackup.config import Config, PruneSettings, Setting
from fibackup.errors import UsageError


def test_snapshot_refuses_contradicting_flags() -> None:
    SnapshotOptions.check_flags(backup_dir="/b", quiesce=True, quiesce_fallback=True)
    with pytest.raises(UsageError, match="--no-quiesce contradicts --quiesce"):
        SnapshotOptions.check_flags(no_quiesce=True, quiesce_fallback=True)
    with pytest.raises(UsageError, match="--no-backup contradicts -b"):
        SnapshotOptions.check_flags(backup_dir="/b", no_backup=True)


def test_restore_and_instant_recovery_refuse_what_does_not_apply() -> None:
    RestoreOptions.check_flags(domain="web", to="/t")
    with pytest.raises(UsageError, match="--no-verify applies only to --instant"):
        RestoreOptions.check_flags(domain="web", to="/t", no_verify=True)
    with pytest.raises(UsageError, match="restore needs -d DOMAIN and --to DIR"):
        RestoreOptions.check_flags(domain="web", to=None)
    with pytest.raises(UsageError, match="--flatten, --force does not apply"):
        InstantOptions.check_flags(domain="web", backup_dir="/b", to="/t", as_name="n",
                                   flatten=True, force=True)
    with pytest.raises(UsageError, match="--instant needs -b, --as:"):
        InstantOptions.check_flags(domain="web", backup_dir=None, to="/t", as_name="")
    InstantOptions.check_finalize_flags()
    with pytest.raises(UsageError, match="--finalize NAME takes no -b, --disk, --instant:"):
        InstantOptions.check_finalize_flags(backup_dir="/b", disks=["vda"], instant=True)


def test_verify_at_needs_a_domain() -> None:
    check_selection("web", "3")
    with pytest.raises(UsageError, match="--at needs -d DOMAIN"):
        check_selection(None, "3")


def _config(**values: object) -> Config:
    return Config(searched=["/f"], files=["/f"],
                  settings={name.replace("__", "."): Setting(value, "/f")
                            for name, value in values.items()})


def test_a_flag_that_means_off_overrides_the_file() -> None:
    settings = _config(snapshot__consolidate="active", snapshot__max_chain=5)
    assert settings.pick("snapshot.consolidate", None) == "active"
    assert settings.pick("snapshot.consolidate", "none") is None
    assert settings.pick("snapshot.consolidate", "pull") == "pull"
    assert settings.pick("snapshot.max_chain", 0) is None
    assert settings.pick("snapshot.max_chain", None) == 5


def test_any_prune_rule_given_replaces_all_of_the_files() -> None:
    settings = _config(prune__keep=7, prune__keep_weekly=4)
    assert settings.prune_rules(PruneSettings()) == PruneSettings(keep=7, keep_weekly=4)
    assert settings.prune_rules(PruneSettings(keep_daily=2)) == PruneSettings(keep_daily=2)
