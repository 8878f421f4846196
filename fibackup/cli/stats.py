"""``fibackup stats``: the command line of fibackup.commands.stats."""
from __future__ import annotations

from typing import Optional

from fibackup.cli.options import BackupOpt, DebugOpt, JsonOpt
from fibackup.cli.render import emit_json
from fibackup.fsutil import human as human_bytes
from fibackup.cli.root import app
from fibackup.cli.running import load_settings, reporter, run
from fibackup.errors import EXIT_OK


@app.command()
def stats(backup_dir: Optional[str] = BackupOpt, as_json: bool = JsonOpt,
          debug: bool = DebugOpt) -> None:
    """Show what a store holds and costs (no libvirt needed): the restore points' logical
    size, the data after deduplication, the bytes stored after compression, and the ratios.

    \b
    Examples:
      fibackup stats -b /backup
      fibackup stats -b s3://backups/site --json
    """
    from fibackup.commands.stats import store_stats
    report = reporter(as_json=as_json)

    def action() -> int:
        result = store_stats(load_settings().backup_dir(backup_dir), report)
        document = result.to_json()
        if as_json:
            emit_json(document)
            return EXIT_OK
        print(f"store            {result.store} (format {result.format}"
              f"{', encrypted' if result.encrypted else ''}, compression {result.compression})")
        print(f"restore points   {result.points} of {result.domains} domain(s)")
        print(f"logical size     {human_bytes(result.logical_bytes)}  (what restoring every "
              "point would write)")
        print(f"after dedup      {human_bytes(result.unique_bytes)}  in {result.chunks} "
              f"chunk(s): {document['dedup_ratio']}x")
        print(f"stored           {human_bytes(result.stored_bytes)}  compression "
              f"{document['compression_ratio']}x, in all {document['total_ratio']}x")
        return EXIT_OK

    run(debug, action, as_json, report)
