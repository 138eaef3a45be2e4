"""Tests of one package's modules, with plain calls or a small real setup; a folder per gateway/ package."""
