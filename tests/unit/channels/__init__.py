"""gateway/channels/: routing rules, names, merged lists, sealed sessions."""
