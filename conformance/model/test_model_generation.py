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
    from infinilm_models.tokenizer import load_tokenizer

    tok = load_tokenizer(model_path)
    texts = json.loads(PROMPTS.read_text())["prompts"]
    if dtype == "f32":
        return [tok.encode(t).ids for t in texts], 20
    # Half-precision gemm runs ~1 GFLOP/s on 2 CPU cores: one prompt there, all on a GPU.
    return [tok.encode(t).ids for t in texts[: 1 if cpu else len(texts)]], 20 if not cpu else 12


def test_model_generation(model_name, model_path, dtype, runtimes, verify, infini_device):
    golden_m, _, ours_m = runtimes
    prompts, n = prompts_for(model_name, model_path, dtype, infini_device.type == "cpu",
                             verify)
    golden_side = f"golden ({golden_m.describe()})"
    for p, ids in enumerate(prompts):
        want, logits = golden_greedy(golden_m, ids, n)
        # fixed length on both sides: the golden path does not stop at end-of-sequence
        out = generate(ours_m, [ids], max_new_tokens=n, eos_token_ids=(), return_logits=True)
        label = f"prompt {p}"
        verify.finite(f"{label}: golden logits", np.stack(logits))
        verify.finite(f"{label}: our logits", np.stack([x[0] for x in out.logits]))
        verify.greedy_tokens(out.tokens[:1], [want], np.stack(logits)[None], dtype,
                             f"{label}: greedy tokens", sides=("ours", golden_side),
                             prompt_tokens=len(ids))
