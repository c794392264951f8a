"""Diagnostic scripts behind the evidence in known_defects.toml and the README's measured
numbers. Not tests: each prints what it measures, e.g.

    python -m tools.probes.probe_b8ops nvidia
    python -m tools.probes.probe_swiglu nvidia          # needs the smollm2 fixture
    python -m tools.probes.probe_issue nvidia bf16      # host time per decode step

Run them from the repository root with InfiniCore built (INFINI_ROOT or the default
prefix); torch and transformers are needed as for the suite.
"""
