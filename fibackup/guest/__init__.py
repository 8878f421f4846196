"""Reading guest filesystems, only ever inside libguestfs's appliance (a small VM): a
hostile guest filesystem is never parsed by the host kernel."""
