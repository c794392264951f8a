"""Greedy generation against transformers' float32 greedy tokens. f32: token-exact. f16/bf16:
the first divergent step is reported and accepted only where the golden's top-2 logit
margin there is below the tolerance (a near-tie, as vLLM's logprob check does)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conformance.judge import get_calibrated
from infinilm_models import generate

from .conftest import prompt_ids

PROMPTS = Path(__file__).resolve().parents[2] / "infinilm_fixtures" / "prompts.json"


def golden_greedy(model, ids: list[int], n: int) -> tuple[list[int], list[np.ndarray]]:
    """transformers' greedy path with its per-step logits (no eos stop: fixed length)."""
    import torch
    from transformers import DynamicCache

    cache, toks, logits = DynamicCache(), [], []
    with torch.inference_mode():
        nxt = torch.tensor([ids])
        for _ in range(n):
            out = model(nxt, past_key_values=cache, use_cache=True).logits[0, -1]
            logits.append(out.double().numpy())
            toks.append(int(out.argmax()))
            nxt = torch.tensor([[toks[-1]]])
    return toks, logits


def prompts_for(model_name: str, model_path: Path, dtype: str, cpu: bool
                ) -> tuple[list[list[int]], int]:
    if model_name != "smollm2":
        return [prompt_ids(model_path, 1, 5)[0].tolist()], 12
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    texts = json.loads(PROMPTS.read_text())["prompts"]
    if dtype == "f32":
        return [tok.encode(t).ids for t in texts], 20
    # Half-precision gemm runs ~1 GFLOP/s on 2 CPU cores: one prompt there, all on a GPU.
    return [tok.encode(t).ids for t in texts[: 1 if cpu else len(texts)]], 20 if not cpu else 12


def test_model_generation(model_name, model_path, dtype, runtimes, verify, tolerances,
                          infini_device):
    golden_m, _, ours_m = runtimes
    margin_tol = get_calibrated(tolerances, "generation_margin", dtype).floor
    prompts, n = prompts_for(model_name, model_path, dtype, infini_device.type == "cpu")
    problems, report = [], []
    for ids in prompts:
        want, logits = golden_greedy(golden_m, ids, n)
        got = generate(ours_m, [ids], max_new_tokens=n).tokens[0].tolist()
        step = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
        entry = {"prompt_ids": ids, "ours": got, "golden": want, "first_divergence": step}
        if step is not None:
            top2 = np.sort(logits[step])[-2:]
            entry["golden_top2_margin"] = float(top2[1] - top2[0])
            if dtype == "f32" or entry["golden_top2_margin"] >= margin_tol:
                problems.append(f"prompt {ids[:6]}...: diverges at step {step} (ours "
                                f"{got[step]}, golden {want[step]}, golden top-2 margin "
                                f"{entry['golden_top2_margin']:.3g} >= {margin_tol:g})")
        report.append(entry)
    verify.info.update(generations=report, margin_tolerance=margin_tol)
    assert not problems, "; ".join(problems)
