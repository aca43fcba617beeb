"""The manager process: registry, NF lifecycle, control server, stats."""
