"""``fibackup mount``, ``umount`` and ``restore-files``: the command line of
fibackup.commands.mount and fibackup.commands.restore_files."""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

import typer

from fibackup.cli.options import BackupOpt, DebugOpt, JsonOpt, QuietOpt
from fibackup.cli.render import emit_json, mounts_table
from fibackup.cli.root import app
from fibackup.cli.running import load_settings, reporter, run
from fibackup.errors import EXIT_OK, UsageError

if TYPE_CHECKING:
    from fibackup.host.mounts import MountRecord


@app.command()
def mount(
    mountpoint: Optional[str] = typer.Argument(None, metavar="MOUNTPOINT", show_default=False),
    domain: Optional[str] = typer.Option(None, "-d", "--domain", metavar="NAME",
                                         help="Domain name (or UUID)."),
    backup_dir: Optional[str] = BackupOpt,
    at: Optional[str] = typer.Option(None, "--at", metavar="ID",
                                     help="The restore point (id or seq) [default: the newest]."),
    raw: bool = typer.Option(False, "--raw", help="Show each disk as the read-only raw file MOUNTPOINT/<disk>.raw instead of its filesystems (for tools that want whole disks)."),
    list_: bool = typer.Option(False, "--list", help="Show what is mounted, and exit."),
    as_json: bool = JsonOpt, quiet: bool = QuietOpt, debug: bool = DebugOpt,
) -> None:
    """Show a restore point's filesystems read-only at MOUNTPOINT, copying nothing.

    A point that holds an operating system shows its root tree as the guest mounts it;
    otherwise each filesystem appears as MOUNTPOINT/<disk>/<partition>/ (a filesystem on
    a whole disk: <disk>/disk/) and each LVM volume as MOUNTPOINT/lvm/<vg>/<lv>/.  The
    filesystems are read inside libguestfs's appliance, never by this host's kernel; the
    point is pinned in the store (prune leaves it alone) until 'fibackup umount'.
    MOUNTPOINT must be an empty directory; only root can read the mountpoint.
    Format-3 stores (directory or S3, encrypted or not); no libvirtd needed.
    With --raw each disk is instead the read-only file MOUNTPOINT/<disk>.raw (no
    appliance: nothing parses the guest's filesystems).

    \b
    Examples:
      fibackup mount -d web -b /backup /mnt/web          # the newest point
      fibackup mount -d web -b s3://bk/site --at 12 /mnt/web12
      fibackup mount -d web -b /backup --raw /mnt/web-disks   # /mnt/web-disks/vda.raw
      fibackup mount --list

    End it with 'fibackup umount MOUNTPOINT'.
    """
    from fibackup.commands.mount import MountOptions, list_mounts, mount_point
    report = reporter(quiet, as_json)

    def action() -> int:
        if list_:
            found = list_mounts()
            if as_json:
                emit_json([record.to_json() for record in found])
            else:
                print(mounts_table(found) if found else "nothing is mounted")
            return EXIT_OK
        if mountpoint is None or domain is None:
            raise UsageError("mount needs -d DOMAIN and a MOUNTPOINT (or --list)")
        settings = load_settings()
        record = mount_point(MountOptions(domain=domain, backup_dir=settings.backup_dir(backup_dir),
                                          mountpoint=mountpoint, at=at, raw=raw))
        if as_json:
            emit_json(record.to_json())
        else:
            _print_mounted(record)
        return EXIT_OK

    run(debug, action, as_json, report)


def _print_mounted(record: "MountRecord") -> None:
    what = "raw disks" if record.raw else record.system or "no operating system"
    print(f"mounted restore point {record.point} of {record.domain} ({what}) at "
          f"{record.mountpoint}, read-only")
    for item in record.shown:
        print(f"  {item['path']:<24} {item['fstype']:<8} {item['device']}")
    for item in record.skipped:
        print(f"  not shown: {item['device']} ({item['fstype'] or '?'}): {item['reason']}")
    print(f"end it with: fibackup umount {record.mountpoint}")


@app.command()
def umount(mountpoint: str = typer.Argument(..., metavar="MOUNTPOINT"),
           as_json: bool = JsonOpt, quiet: bool = QuietOpt, debug: bool = DebugOpt) -> None:
    """End a 'fibackup mount': unmount, stop its servers, remove its pin.

    A mountpoint whose server died ('mount --list' shows it stale) is cleaned up too.

    \b
    Examples:
      fibackup umount /mnt/web
    """
    from fibackup.commands.mount import unmount
    report = reporter(quiet, as_json)

    def action() -> int:
        load_settings()
        record = unmount(mountpoint, report)
        if as_json:
            emit_json({"unmounted": record.mountpoint, "point": record.point})
        else:
            print(f"unmounted {record.mountpoint} (restore point {record.point} of "
                  f"{record.domain})")
        return EXIT_OK

    run(debug, action, as_json, report)


@app.command("restore-files")
def restore_files(
    domain: str = typer.Option(..., "-d", "--domain", metavar="NAME", help="Domain name (or UUID)."),
    backup_dir: Optional[str] = BackupOpt,
    at: Optional[str] = typer.Option(None, "--at", metavar="ID",
                                     help="The restore point (id or seq) [default: the newest]."),
    paths: List[str] = typer.Option([], "--path", metavar="PATH",
                                    help="A file or directory to copy (repeatable): as the guest "
                                         "sees it, or <disk>/<partition>/path (lvm/<vg>/<lv>/path) "
                                         "when the point holds no operating system."),
    to: str = typer.Option(..., "--to", metavar="DIR", help="Where the copies go (created; "
                                                            "nothing in it is overwritten)."),
    as_json: bool = JsonOpt, quiet: bool = QuietOpt, debug: bool = DebugOpt,
) -> None:
    """Copy files or trees out of a restore point, without restoring its disks.

    Modes, owners, times, symlinks (copied as links, never followed), hard links, device
    nodes and extended attributes are kept; sparse files stay sparse.

    \b
    Examples:
      fibackup restore-files -d web -b /backup --at 12 --path /etc/nginx --to /root/back
      fibackup restore-files -d files -b /backup --path vdb/1/projects/report.odt --to .
    """
    from fibackup.commands.restore_files import RestoreFilesOptions, restore_files as copy_out
    report = reporter(quiet, as_json)

    def action() -> int:
        settings = load_settings()
        result = copy_out(RestoreFilesOptions(domain=domain,
                                              backup_dir=settings.backup_dir(backup_dir),
                                              paths=paths, to=to, at=at), report)
        if as_json:
            emit_json(result.to_json())
        else:
            print(f"restored {', '.join(result.copied)} from restore point {result.point}: "
                  f"{result.files} file(s), {result.directories} directorie(s), "
                  f"{result.links} link(s), {result.bytes} bytes")
        return EXIT_OK

    run(debug, action, as_json, report)
