"""The pure model: chains, layers, restore points and names (no I/O)."""
