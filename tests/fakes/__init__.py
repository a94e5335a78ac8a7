"""Local stand-ins for external services, used only by tests and benchmarks (never shipped)."""
