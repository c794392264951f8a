"""SmolLM2-135M-shaped checkpoints with seeded random weights, for the model benchmarks.

Speed does not depend on weight values, and random weights need neither the network nor
the converted real checkpoint; the accuracy gate compares with transformers on the very
same weights. Built with infinilm_fixtures/tiny.py's generator (VariantSpec + make_weights), so
the values are a pure function of (seed, tensor name).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from infinilm_fixtures.tiny import VariantSpec, _write_weights, make_weights

# SmolLM2-135M's architecture (HuggingFaceTB/SmolLM2-135M config.json).
SMOLLM2_135M = VariantSpec(
    name="smollm2-135m-random", description="SmolLM2-135M shapes, seeded random weights",
    seed=135, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
    tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0,
    max_position_embeddings=8192,
)


# A LLaMA-3.2-1B-shaped configuration: where splitting over devices pays off (the issue's
# tensor-parallel benchmarks). Random weights, stored in bf16 (2.5 GB).
LLAMA_1B = VariantSpec(
    name="llama-3.2-1b-random", description="Llama-3.2-1B shapes, seeded random weights",
    seed=1234, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
    num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
    tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=500000.0,
    max_position_embeddings=8192,
)
# The same family shrunk for the smoke and CPU scales (every split of tp 1/2/4 and pp 2
# still divides it).
LLAMA_1B_SMOKE = replace(LLAMA_1B, name="llama-1b-shaped-smoke", hidden_size=256,
                         intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=4, head_dim=32, vocab_size=1024)


def spec_with_layers(num_layers: int) -> VariantSpec:
    """SmolLM2-135M with fewer layers: per-layer shapes unchanged, cost cut for smoke runs."""
    if num_layers == SMOLLM2_135M.num_hidden_layers:
        return SMOLLM2_135M
    return replace(SMOLLM2_135M, name=f"{SMOLLM2_135M.name}-{num_layers}l",
                   num_hidden_layers=num_layers)


def write_checkpoint(spec: VariantSpec, out: Path, *, bf16: bool = False) -> Path:
    """config.json + model.safetensors (float32, or bf16 to halve a large checkpoint) in
    `out`; no tokenizer (ids are random)."""
    out.mkdir(parents=True, exist_ok=True)
    config = spec.hf_config()
    weights = make_weights(spec)
    if bf16:
        import ml_dtypes

        weights = {k: v.astype(ml_dtypes.bfloat16) for k, v in weights.items()}
        config["torch_dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _write_weights(spec, weights, out)
    return out
