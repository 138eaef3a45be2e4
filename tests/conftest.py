"""Shared fixtures: the recording relay (tests/recording_relay.py)."""

pytest_plugins = ["tests.recording_relay"]
