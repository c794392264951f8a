"""Perplexity of SmolLM2 on the fixed text in infinilm_fixtures/texts, against transformers'."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conformance.judge import get_calibrated

from .harness import hf_capture, hf_model, our_model, resolve_model, torch_device

TEXT = Path(__file__).resolve().parents[2] / "infinilm_fixtures" / "texts" / "perplexity.txt"


def perplexity(logits: np.ndarray, ids: np.ndarray) -> float:
    z = logits[0, :-1] - logits[0, :-1].max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -logp[np.arange(len(ids) - 1), ids[1:]]
    return float(np.exp(nll.mean()))


def test_model_perplexity(model_name, dtype, infini_device, verify, tolerances):
    """For a trained model (SmolLM2) a meaningful number; for the random tiny ones still a
    check of the whole log-softmax path over every position."""
    from tokenizers import Tokenizer

    path = resolve_model(model_name)
    ids = np.array(Tokenizer.from_file(str(path / "tokenizer.json")).encode(
        TEXT.read_text()).ids, dtype=np.int64)
    if model_name != "smollm2":
        ids = ids[:128]  # the tiny checkpoints hold 256 positions
    elif infini_device.type == "cpu" and dtype != "f32":
        ids = ids[:64]  # half-precision gemm runs ~1 GFLOP/s on 2 CPU cores
    golden = perplexity(hf_capture(hf_model(str(path), "f32", "cpu"), ids[None])[0]["logits"],
                        ids)
    tdev = torch_device(str(infini_device))
    ref_m = hf_model(str(path), dtype, tdev)
    ref = perplexity(hf_capture(ref_m, ids[None])[0]["logits"], ids)
    ours_m = our_model(str(path), dtype, str(infini_device))
    ours = perplexity(ours_m.forward(ids[None], all_logits=True).numpy().astype(np.float64),
                      ids)
    cal = get_calibrated(tolerances, "perplexity", dtype)
    mine, theirs = abs(ours - golden) / golden, abs(ref - golden) / golden
    verify.info.update(tokens=len(ids), golden=golden, transformers_same_dtype=ref, ours=ours,
                       rel_delta=mine, reference_rel_delta=theirs)
    assert np.isfinite(ours), f"perplexity is {ours}"
    assert mine <= cal.threshold(theirs), (
        f"perplexity {ours:.4f} vs golden {golden:.4f}: relative delta {mine:.3g} > "
        f"{cal.threshold(theirs):.3g} (transformers {dtype}: {ref:.4f})")
