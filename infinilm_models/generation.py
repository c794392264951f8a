"""Autoregressive generation with the KV cache: greedy or sampled through InfiniCore's
random_sample op (temperature, top-k, top-p), reproducible from a seed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .runtime import Tensor, ops


@dataclass
class GenerationConfig:
    max_new_tokens: int = 20
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    seed: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = no limit), got {self.top_k}")


@dataclass
class GenerationOutput:
    tokens: np.ndarray  # [batch, new] generated ids (eos included; eos-padded after a stop)
    logits: list[np.ndarray] = field(default_factory=list)  # per step [batch, vocab]
    prompt_length: int = 0


def generate(model, input_ids: Sequence[Sequence[int]] | np.ndarray,
             config: GenerationConfig | None = None, *, return_logits: bool = False,
             **kwargs) -> GenerationOutput:
    """Prefill the prompt (equal lengths across the batch), then decode one token per step."""
    cfg = config or GenerationConfig(**kwargs)
    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {ids.shape}")
    batch, prompt_len = ids.shape
    if prompt_len + cfg.max_new_tokens > model.max_cache_len:
        raise ValueError(f"prompt ({prompt_len}) + max_new_tokens ({cfg.max_new_tokens}) "
                         f"exceeds the model's max_cache_len ({model.max_cache_len})")
    cache = model.new_cache(batch, prompt_len + cfg.max_new_tokens)
    rng = np.random.default_rng(cfg.seed)
    # One id slot per row, read back with a single copy per step (one host sync).
    results = Tensor.zeros((batch,), "i32", model.device)
    slots = [results.select(0, b) for b in range(batch)]
    vocab = model.config.vocab_size
    # topk <= 1 makes InfiniCore's random_sample an argmax; 0 means "no top-k limit".
    topk = 1 if not cfg.do_sample else (cfg.top_k or vocab)
    topp = cfg.top_p if cfg.do_sample else 0.0

    out = np.zeros((batch, cfg.max_new_tokens), dtype=np.int64)
    done = np.zeros(batch, dtype=bool)
    eos = np.array(cfg.eos_token_ids or [-1], dtype=np.int64)
    step_logits: list[np.ndarray] = []
    logits = model.forward(ids, cache=cache)  # [batch, 1, vocab]
    model.prepare_decode(cache, cfg.max_new_tokens - 1)
    for step in range(cfg.max_new_tokens):
        if return_logits:
            step_logits.append(logits.numpy().reshape(batch, vocab))
        for b in range(batch):
            row = logits.select(0, b).select(0, 0)  # [vocab]
            r = float(rng.random()) if cfg.do_sample else 0.0
            ops.random_sample(slots[b], row, r, topp, topk, cfg.temperature)
        out[:, step] = np.where(done, eos[0], results.numpy())
        done |= np.isin(out[:, step], eos)
        if done.all() or step + 1 == cfg.max_new_tokens:
            out = out[:, : step + 1]
            break
        logits = model.forward(out[:, step:step + 1], cache=cache)
    return GenerationOutput(tokens=out, logits=step_logits, prompt_length=prompt_len)
