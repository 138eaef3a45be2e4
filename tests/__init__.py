"""The test suite: unit/ mirrors gateway/, then contract/, e2e/, deploy/; helpers live in support/."""
