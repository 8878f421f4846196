"""Option declarations several commands share (each command declares its own options in
its module).  Their help texts are the command reference's (docs/CLI.md)."""
from __future__ import annotations

import typer

DomainOpt = typer.Option(..., "-d", "--domain", metavar="NAME", help="Domain name (repeatable).")
DomainsOpt = typer.Option([], "-d", "--domain", metavar="NAME",
                          help="Domain name (repeatable); or --all / --all-running.")
AllOpt = typer.Option(False, "--all", help="Every defined (persistent) domain.")
AllRunningOpt = typer.Option(False, "--all-running", help="Every running domain.")
BackupOpt = typer.Option(None, "-b", "--backup-dir", metavar="DIR", help="Backup directory "
                         "[default: backup_dir of the configuration file].")
ConnectOpt = typer.Option(None, "--connect", "-c", metavar="URI", show_default=False,
                          help="libvirt URI [default: connect of the configuration file, else "
                          "$LIBVIRT_DEFAULT_URI, else qemu:///system].")
JsonOpt = typer.Option(False, "--json", help="Print a JSON result on stdout.")
DebugOpt = typer.Option(False, "--debug", help="Show tracebacks of errors.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="Only warnings and errors on stderr, no "
                        "progress bars (a run's log in DIR/logs still gets every line).")
JobsOpt = typer.Option(None, "--jobs", "-j", min=1, max=64, metavar="N", show_default=False,
                       help="Disks copied at once [default: jobs of the configuration "
                       "file, else 2].")
BwlimitOpt = typer.Option(None, "--bwlimit", metavar="RATE", help="Limit all copies of the run "
                          "together to RATE bytes/s: 200M (MiB/s), 1G, 500K; a plain number "
                          "is MiB/s [default: bwlimit of the configuration file, else "
                          "unlimited].")
VerifyBwlimitOpt = typer.Option(None, "--bwlimit", metavar="RATE", help="Limit reading to RATE "
                                "bytes/s: 200M (MiB/s), 1G, 500K; a plain number is MiB/s "
                                "[default: bwlimit of the configuration file, else "
                                "unlimited].")
PasswordFileOpt = typer.Option(None, "--password-file", metavar="FILE", help="The passphrase of "
                               "an encrypted store, its first line [default: "
                               "$FIBACKUP_PASSWORD_FILE, else password_file or "
                               "password_command of [store], else a prompt].")
