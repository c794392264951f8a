"""The fixed-shape decode step against the plain decode path: on a backend with graphs
the step replayed as a captured graph, elsewhere (the CPU) the same fixed-shape step run
eagerly (its masked attention over the whole cache is backend-independent). Batch 1 and
8, over cache lengths from the prompt's to past the first capture.

The two compute the same numbers in another order (the scores over all positions, the
mask added inside the gemm): their logits may differ by what that is worth to a mature
implementation, transformers' own error in the dtype (as for cached vs recompute), and
the greedy tokens must agree up to a near tie. On a 30-layer model an op-level tolerance
would mistake the amplified reordering for a defect (SmolLM2 f16 on an H200: NMSE 1.5e-6
between the two, against transformers' own 2e-6 to 8e-6)."""

from __future__ import annotations

import numpy as np
import pytest

from conformance.judge import token_nmse
from infinilm_models import generate
from infinilm_models.runtime.graph import graph_backend

from .conftest import prompt_ids
from .harness import hf_capture

NEW = 12


@pytest.mark.parametrize("batch", [1, 8], ids=["bs1", "bs8"])
def test_model_graph(model_name, model_path, dtype, batch, runtimes, verify, infini_device):
    golden_m, ref_m, ours = runtimes
    graphs = graph_backend(infini_device) is not None
    verify.info.update(replayed_graph=graphs, new_tokens=NEW)
    ids = prompt_ids(model_path, batch, 7, verify)
    plain = generate(ours, ids, max_new_tokens=NEW, eos_token_ids=(), graph=False,
                     return_logits=True)
    if graphs:
        fixed = generate(ours, ids, max_new_tokens=NEW, eos_token_ids=(), graph=True,
                         return_logits=True)
    else:  # the same step, eagerly
        from infinilm_models.models.llama.decode_step import FixedDecoder

        real = ours.fixed_decoder
        ours.fixed_decoder = lambda c, graph="auto": FixedDecoder(ours, c, graph=False)
        try:
            fixed = generate(ours, ids, max_new_tokens=NEW, eos_token_ids=(), graph=True,
                             return_logits=True)
        finally:
            ours.fixed_decoder = real
    a, b = np.stack(fixed.logits), np.stack(plain.logits)  # [steps, batch, vocab]
    verify.finite("fixed-shape step logits", a)
    ref_err = _reference_error(ids, plain.tokens, golden_m, ref_m, NEW)
    verify.calibrated_value("logits of every step vs the plain path", token_nmse(a, b), ref_err,
                            "cache_vs_recompute", dtype, "nmse")
    diverge = np.argwhere(fixed.tokens != plain.tokens)
    step = None if not len(diverge) else int(diverge[0][1])
    row = 0 if step is None else int(diverge[0][0])
    verify.near_tie(step, None if step is None else int(fixed.tokens[row, step]),
                    None if step is None else int(plain.tokens[row, step]),
                    None if step is None else b[step, row], dtype,
                    "greedy tokens vs the plain path")


def _reference_error(ids, tokens, golden_m, ref_m, n: int) -> float:
    """transformers in the dtype vs float32 on the plain path's sequence (its last n
    positions' logits): what the dtype costs a mature implementation here."""
    if ref_m is golden_m:
        return 0.0
    full = np.concatenate([ids, tokens[:, :-1]], axis=1)
    g = hf_capture(golden_m, full)["logits"][:, -n:]
    r = hf_capture(ref_m, full)["logits"][:, -n:]
    return token_nmse(r, g)
