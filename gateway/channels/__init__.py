"""What clients see: one-server and aggregated channels, routing rules and names, merged lists, list
change events, sealed sessions, multi round-trip requests. Does no transport I/O itself."""
