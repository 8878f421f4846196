"""Recovery of restores: a restore needs no domain, so its journal
(``restore-<token>.json``) is undone as a whole, by the restore itself on an
error and by the next restore or ``repair`` after a crash: the staging
directory is removed, and so are the files it published without defining the
domain that was to use them (``restore.publish`` without ``restore.define``
done), each only if it still is the file the restore published.
"""
from __future__ import annotations

import os
import shutil
from typing import Optional

from fibackup.errors import FibackupError
from fibackup.fsutil import file_stamp, remove_quietly
from fibackup.host import journal as journals
from fibackup.host.journal import Journal
from fibackup.host.lock import DomainLock
from fibackup.model.states import StepStatus
from fibackup.report import Reporter
from fibackup.virt import domxml
from fibackup.virt.libvirt_api import Connection


def repair_restores(conn: Optional[Connection], report: Reporter,
                    names: Optional[set[str]] = None) -> list[str]:
    """Undo restores that died before they defined their domain (``names``: only those of
    these domains; None: all)."""
    actions = []
    for journal in journals.restore_journals():
        wanted = {journal.domain_name, str(journal.options.get("domain_uuid")),
                  str(journal.options.get("as_name"))}
        if names is not None and not wanted & names:
            continue
        lock = DomainLock(journal.key, f"restore {journal.key}")
        try:
            lock.acquire()
        except FibackupError:
            report.info(f"the restore {journal.key} (pid {journal.pid}) is still running; "
                        "left alone")
            continue
        try:
            current = journals.load(journal.key)    # it may have ended before we got the lock
            if current is None:
                continue
            undone = undo_restore(conn, current, report)
            if undone is not None:
                actions.extend(undone)
                current.end()
        finally:
            lock.release()
            remove_quietly(lock.path)
    return actions


def undo_restore(conn: Optional[Connection], journal: Journal,
                 report: Reporter) -> Optional[list[str]]:
    """Remove what an unfinished restore left; None when that needs libvirt (``conn``)
    to tell whether the domain was already defined with the files."""
    actions = []
    staging = journal.options.get("staging")
    define = journal.last("restore.define")
    publish = journal.last("restore.publish")
    if publish is not None and (define is None or define.status != StepStatus.DONE):
        files: dict[str, list[int]] = dict(publish.data.get("files") or {})   # FileStamp
        existed = set(publish.data.get("existed") or [])
        if define is not None and conn is None:
            return None
        if define is None or conn is None or not _defined_with(conn, journal, list(files)):
            for path, stamp in files.items():
                # moved there by this restore, and not a name it overwrote (--force)
                if path not in existed and \
                        file_stamp(path, follow_symlinks=False) == tuple(stamp):
                    remove_quietly(path)
                    actions.append(f"removed {path}, published by a restore that was "
                                   "interrupted before it defined the domain (run the restore "
                                   "again)")
    if staging and os.path.isdir(staging):
        shutil.rmtree(staging, ignore_errors=True)
        actions.append(f"removed the staging directory {staging} of an interrupted restore")
    for action in actions:
        report.info(action)
    return actions


def _defined_with(conn: Connection, journal: Journal, files: list[str]) -> bool:
    name = journal.options.get("as_name")
    domain = (conn.find_domain(str(name)) if name
              else conn.domain_by_uuid(str(journal.options.get("domain_uuid"))))
    if domain is None:
        return False
    sources = {spec.source for spec in domxml.disks(domxml.parse(domain.inactive_xml()))}
    return any(path in sources for path in files)
