"""What fibackup keeps on the host itself: per-domain locks and state files."""
