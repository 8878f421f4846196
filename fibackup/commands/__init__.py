"""The commands: the orchestration of adapters (virt, host, qemu), store and model.

Layering, top to bottom; a module imports only modules of its own layer that
are listed after it, and the layers below (checked by import_cycles.py)::

    entry points     compose.py (snapshot_domain, consolidate_domain: the two commands
                     that run each other), repair.py, restore.py, instant.py,
                     finalize.py, prune.py, verify.py, listing.py
    run code         snapshot.py -> backup.py; consolidate.py -> consolidate_job.py;
                     restore.py -> restore_stage.py; instant.py -> grants.py;
                     restore_common.py (what restore and instant share), domfiles.py,
                     common.py, parallel.py
    journal context  journalled.py: lock the domain, reconcile a dead run, journal
    recovery         recovery/<command>.py: each command's journal step -> handler table
    below            virt/ (libvirt, domain XML, trust), host/ (state, journal, locks,
                     ACLs), store/, qemu/, model/ (pure: chains, points, names, states)

Each command module keeps its Options dataclass and its run code; the entry
point of ``snapshot`` and ``consolidate`` is compose.py, so that neither
imports the other (the consolidation gets the catch-up snapshot as a callable).
"""
