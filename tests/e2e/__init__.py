"""End to end: the real gateway and relay processes with official-SDK clients and servers, under load and faults."""
