"""Conformance and numerical test harness for LLaMA on InfiniCore (a pytest suite)."""
