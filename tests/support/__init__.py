"""Helpers written once for the whole suite: the process harness, the scripted control plane, test servers."""
