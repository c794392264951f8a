"""Perplexity of the fixture text against transformers': for a trained model (SmolLM2) a
meaningful number; for the random tiny ones still a check of the whole log-softmax path
over every position."""

from __future__ import annotations

import numpy as np

from .faithful import alternative
from .harness import hf_forward
from .prompts import prompt_ids


def perplexity(logits: np.ndarray, ids: np.ndarray) -> float:
    z = logits[0, :-1] - logits[0, :-1].max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -logp[np.arange(len(ids) - 1), ids[1:]]
    return float(np.exp(nll.mean()))


def test_model_perplexity(model_name, model_path, dtype, infini_device, runtimes, verify):
    if model_name != "smollm2":
        n = 128  # the tiny checkpoints hold 256 positions
    elif infini_device.type == "cpu" and dtype != "f32":
        n = 64  # half-precision gemm runs ~1 GFLOP/s on 2 CPU cores
    else:
        n = _text_tokens(model_path)
    golden_m, ref_m, ours_m = runtimes
    n = min(n, ours_m.max_cache_len)
    ids = prompt_ids(model_path, 1, n, verify)[0]
    golden = perplexity(hf_forward(golden_m, ids[None])["logits"], ids)
    # f32 on the CPU: the reference is the golden model itself (one run, not two)
    ref = golden if ref_m is golden_m else perplexity(hf_forward(ref_m, ids[None])["logits"],
                                                      ids)
    ours = perplexity(ours_m.forward(ids[None], all_logits=True).numpy().astype(np.float64),
                      ids)
    mine, theirs = abs(ours - golden) / golden, abs(ref - golden) / golden
    alt_m = alternative(ref_m)  # f16/bf16: the spread of correct implementations
    alt = perplexity(hf_forward(alt_m, ids[None])["logits"], ids) if alt_m else None
    verify.param(tokens=len(ids))
    verify.measure("perplexity of the fixture text", {"ours": ours, "golden": golden},
                   {"transformers_same_dtype": ref,
                    **({"faithful_rounding_alternative": alt} if alt else {})})
    verify.calibrated_value("perplexity: relative delta to the golden", mine, theirs,
                            "perplexity", dtype, "rel_delta",
                            alternative=abs(alt - golden) / golden if alt else None)


def _text_tokens(model_path) -> int:
    """The whole fixture text (what SmolLM2's perplexity is quoted on)."""
    from infinilm_models.tokenizer import load_tokenizer

    from .prompts import TEXT

    return len(load_tokenizer(model_path).encode(TEXT.read_text()).ids)
