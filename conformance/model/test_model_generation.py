"""Greedy generation against transformers' float32 greedy tokens. f32: token-exact. f16/bf16:
the first divergent step is accepted only where the golden's top-2 logit margin there is
below the tolerance (a near tie, as vLLM's logprob check does). Logits that are not finite
on either side fail: two implementations that both emit token 0 from NaN logits do not
agree, they are both broken."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from infinilm_models import generate

from .prompts import prompt_ids
from .reference import Reference, cached

PROMPTS = Path(__file__).resolve().parents[2] / "infinilm_fixtures" / "prompts.json"


@cached
def golden_greedy(ref: Reference, ids: list[int], n: int
                  ) -> tuple[list[int], list[np.ndarray]]:
    """transformers' greedy path with its per-step logits (no eos stop: fixed length)."""
    import torch
    from transformers import DynamicCache

    model = ref.model
    cache, toks, logits = DynamicCache(), [], []
    with torch.inference_mode():
        nxt = torch.tensor([ids], device=model.device)
        for _ in range(n):
            out = model(nxt, past_key_values=cache, use_cache=True).logits[0, -1]
            logits.append(out.to("cpu", torch.float64).numpy())
            toks.append(int(out.argmax()))
            nxt = torch.tensor([[toks[-1]]], device=model.device)
    return toks, logits


def prompts_for(model_name: str, model_path: Path, dtype: str, cpu: bool, verify
                ) -> tuple[list[list[int]], int]:
    if model_name != "smollm2":
        return [prompt_ids(model_path, 1, 5, verify)[0].tolist()], 12
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    texts = json.loads(PROMPTS.read_text())["prompts"]
    if dtype == "f32":
        return [tok.encode(t).ids for t in texts], 20
    # Half-precision gemm runs ~1 GFLOP/s on 2 CPU cores: one prompt there, all on a GPU.
    return [tok.encode(t).ids for t in texts[: 1 if cpu else len(texts)]], 20 if not cpu else 12


def test_model_generation(model_name, model_path, dtype, runtimes, verify, infini_device):
    golden_m, _, ours_m = runtimes
    prompts, n = prompts_for(model_name, model_path, dtype, infini_device.type == "cpu",
                             verify)
    report = []
    for p, ids in enumerate(prompts):
        want, logits = golden_greedy(golden_m, ids, n)
        # fixed length on both sides: the golden path does not stop at end-of-sequence
        out = generate(ours_m, [ids], max_new_tokens=n, eos_token_ids=(), return_logits=True)
        got = out.tokens[0].tolist()
        label = f"prompt {p}"
        verify.finite(f"{label}: golden logits", np.stack(logits))
        verify.finite(f"{label}: our logits", np.stack([x[0] for x in out.logits]))
        step = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
        if step is None and len(got) != len(want):
            step = min(len(got), len(want))
        verify.near_tie(step, got[step] if step is not None and step < len(got) else None,
                        want[step] if step is not None and step < len(want) else None,
                        logits[min(step, len(logits) - 1)] if step is not None else None,
                        dtype, f"{label}: greedy tokens")
        report.append({"prompt_ids": ids, "ours": got, "golden": want,
                       "first_divergence": step})
    verify.info.update(generations=report)
