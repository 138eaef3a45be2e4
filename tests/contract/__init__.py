"""Contracts: the tunnel v1 wire against a scripted control plane; one suite per interface (Upstream, queues)."""
