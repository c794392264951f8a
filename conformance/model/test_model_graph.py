"""The fixed-shape decode step against the plain decode path: on a backend with graphs
the step replayed as a captured graph, elsewhere (the CPU) the same fixed-shape step run
eagerly (its masked attention over the whole cache is backend-independent). Batch 1 and
8, over cache lengths from the prompt's to past the first capture.

Both paths start from one prefill (the same computation: done once, the cache copied) and
are fed the same tokens, the plain path's greedy choices: teacher-forced, so that each
step's logits are compared like with like. Without it, a backend that rounds one logit
differently may split the two at an exact tie, and every later step would compare two
different continuations (HF's _check_similar_generate_outputs stops at the split for
that reason; feeding one sequence keeps every step comparable).

The two compute the same numbers in another order (the scores over all positions, the
mask added inside the gemm): their logits may differ by what that is worth to a mature
implementation, transformers' own error in the dtype (as for cached vs recompute), and
the fixed step's greedy choice must agree with the plain one up to a near tie. On a
30-layer model an op-level tolerance would mistake the amplified reordering for a defect
(SmolLM2 f16 on an H200: NMSE 1.5e-6 between the two, against transformers' own 2e-6 to
8e-6)."""

from __future__ import annotations

import numpy as np
import pytest

from conformance.judge import token_nmse
from infinilm_models.runtime.graph import graph_backend
from infinilm_models.runtime.memory import zero_fill

from .faithful import alternative
from .harness import hf_forward
from .prompts import prompt_ids
from .reference import cached

NEW = 12  # tokens decoded after the prompt (NEW - 1 decode steps: the first is the prefill's)


@pytest.mark.parametrize("batch", [1, 8], ids=["bs1", "bs8"])
def test_model_graph(model_name, model_path, dtype, batch, runtimes, verify, infini_device):
    from infinilm_models.models.llama.decode_step import FixedDecoder

    golden_m, ref_m, ours = runtimes
    graphs = graph_backend(infini_device) is not None
    verify.param(replayed_graph=graphs, new_tokens=NEW, teacher_forced=(
        "both paths are fed the plain path's greedy tokens from one shared prefill"))
    # The tiny fixtures' prompt ends short of the step's first span (64 positions) and the
    # decode crosses it; the caches hold more than is filled, so each step attends over
    # its span, not the allocation (decode_step.py). SmolLM2's short prompt keeps the CPU
    # run affordable.
    ids = prompt_ids(model_path, batch, 7 if model_name == "smollm2" else 58, verify)
    total = ids.shape[1] + NEW
    room = min(total + 100, ours.max_cache_len)
    plain_cache = ours.new_cache(batch, room)
    first = ours.forward(ids, cache=plain_cache).numpy().reshape(batch, -1).astype(np.float64)
    fixed_cache = ours.new_cache(batch, room)
    fixed_cache.copy_from(plain_cache)
    decoder = FixedDecoder(ours, fixed_cache, graph=graphs)
    tokens = [first.argmax(-1)]
    plain_steps, fixed_steps = [], []
    try:
        for _ in range(NEW - 1):
            tok = tokens[-1]
            plain_steps.append(ours.forward(tok[:, None], cache=plain_cache).numpy()
                               .reshape(batch, -1).astype(np.float64))
            # The fixed step has buffers of its own; its logits are cleared before each step
            # too, so a replay that computes nothing shows as zeros, never as an earlier
            # step's (or the plain path's) logits.
            zero_fill(decoder.bufs.logits.buffer)
            fixed_steps.append(decoder.step(tok).numpy().reshape(batch, -1)
                               .astype(np.float64))
            tokens.append(plain_steps[-1].argmax(-1))
    finally:
        decoder.close()
    a, b = np.stack(fixed_steps), np.stack(plain_steps)  # [steps, batch, vocab]
    verify.param(graphs_per_step=decoder.current.graphs if decoder.current else 0,
                 last_span=decoder.last_span)
    verify.finite("fixed-shape step logits", a)
    seq = np.stack(tokens, axis=1)  # [batch, NEW]: the plain path's greedy tokens
    ref_err = _reference_error(ids, seq, golden_m, ref_m, NEW - 1)
    alt_m = alternative(ref_m)  # f16/bf16: the spread of correct implementations
    alt_err = _reference_error(ids, seq, golden_m, alt_m, NEW - 1) if alt_m else None
    verify.calibrated_value("logits of every step vs the plain path", token_nmse(a, b), ref_err,
                            "cache_vs_recompute", dtype, "nmse", alternative=alt_err)
    # the fixed step's own greedy choice at each step against the plain path's tokens
    verify.greedy_tokens(a.argmax(-1).T, seq[:, 1:], b.transpose(1, 0, 2), dtype,
                         "greedy tokens vs the plain path",
                         sides=("fixed-shape step", "plain step"))


def _reference_error(ids, tokens, golden_m, ref_m, n: int) -> float:
    """transformers in the dtype vs the golden on the decoded sequence (the logits of its
    last n decode positions): what the dtype costs a mature implementation here."""
    if ref_m is golden_m:
        return 0.0
    return _logits_error(golden_m, ref_m, np.concatenate([ids, tokens[:, :-1]], axis=1), n)


@cached
def _logits_error(golden_m, ref_m, full: np.ndarray, n: int) -> float:
    g = hf_forward.uncached(golden_m, full)["logits"][:, -n:]
    r = hf_forward.uncached(ref_m, full)["logits"][:, -n:]
    return token_nmse(r, g)
