"""Support for tests, benchmarks and notebooks run from a checkout (not needed to use diarflow)."""
