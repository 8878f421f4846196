"""fibackup: forward-incremental, verifiable backups of libvirt/QEMU domains."""
__version__ = "0.1.0"
