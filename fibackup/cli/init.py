"""``fibackup init``: the command line of fibackup.commands.init."""
from __future__ import annotations

from typing import Optional

import typer

from fibackup.cli.options import BackupOpt, DebugOpt, JsonOpt, PasswordFileOpt
from fibackup.cli.render import emit_json
from fibackup.cli.root import app
from fibackup.cli.running import load_settings, reporter, run, use_password_file
from fibackup.errors import EXIT_OK


@app.command()
def init(
    backup_dir: Optional[str] = BackupOpt,
    encrypt: Optional[bool] = typer.Option(
        None, "--encrypt/--no-encrypt", show_default=False,
        help="Encrypt everything stored (AES-256-GCM) under a random key that the "
        "passphrase wraps [default: encrypt of the configuration file's [store], else no]."),
    compression: Optional[str] = typer.Option(
        None, "--compression", metavar="zstd[:LEVEL]|none", show_default=False,
        help="Chunk compression [default: compression of [store], else zstd:2]."),
    chunk_size: Optional[str] = typer.Option(
        None, "--chunk-size", metavar="SIZE", show_default=False,
        help="Chunk size of the disks' view, a power of two from 64K to 64M [default: "
        "chunk_size of [store], else 4M]."),
    store_format: Optional[int] = typer.Option(
        None, "--format", metavar="1|3", show_default=False,
        help="3: chunks, compressed and deduplicated; 1: layer copies, as fibackup before "
        "0.3 wrote them [default: format of [store], else 3]."),
    password_file: Optional[str] = PasswordFileOpt,
    as_json: bool = JsonOpt, debug: bool = DebugOpt,
) -> None:
    """Make an empty directory or S3 prefix a backup store.

    The passphrase of an encrypted store comes from --password-file, else
    $FIBACKUP_PASSWORD_FILE, else password_file or password_command of the
    configuration file's [store], else a prompt. Keep it safe: without it (or
    another key, see 'fibackup key') nobody can read the backups, fibackup neither.

    \b
    Examples:
      fibackup init -b /backup
      fibackup init -b s3://backups/hv1 --encrypt --password-file /root/.fibackup-pass
      fibackup init -b /backup --compression zstd:6 --chunk-size 1M
    """
    from fibackup.commands.init import InitOptions, init as run_init
    report = reporter(as_json=as_json)

    def action() -> int:
        use_password_file(password_file)
        settings = load_settings()
        directory = settings.backup_dir(backup_dir)
        store = run_init(InitOptions(
            location=directory, format=settings.pick("store.format", store_format),
            encrypt=settings.pick("store.encrypt", encrypt),
            compression=settings.pick("store.compression", compression),
            chunk_size=settings.pick("store.chunk_size", chunk_size)))
        described = "format 1" if store.settings is None else (
            f"format 3, chunks of {store.settings.chunk_size // 1024} KiB, "
            f"{store.settings.compression.spec}, "
            f"{'encrypted' if store.settings.encrypted else 'not encrypted'}")
        if as_json:
            emit_json({"store": store.root, "store_id": store.store_id,
                       "format": store.version,
                       "encrypted": bool(store.settings and store.settings.encrypted)})
        else:
            print(f"initialised {store.root} ({described})")
        return EXIT_OK

    run(debug, action, as_json, report)
