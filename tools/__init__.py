"""Developer tools that are not part of the installed service (manifest rendering, dashboard snapshots)."""
