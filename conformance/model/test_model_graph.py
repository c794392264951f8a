"""The fixed-shape decode step against the plain decode path: on a backend with graphs
the step replayed as a captured graph, elsewhere (the CPU) the same fixed-shape step run
eagerly (its masked attention over the whole cache is backend-independent). Greedy tokens
identical, and every step's logits within the dtype's gemm tolerance of the plain path's;
batch 1 and 8, over cache lengths from the prompt's to past the first capture."""

from __future__ import annotations

import numpy as np
import pytest

from infinilm_models import generate
from infinilm_models.runtime.graph import graph_backend

from .conftest import prompt_ids

NEW = 12


@pytest.mark.parametrize("batch", [1, 8], ids=["bs1", "bs8"])
def test_model_graph(model_name, model_path, dtype, batch, runtimes, verify, infini_device):
    _, _, ours = runtimes
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
    verify.exact(fixed.tokens, plain.tokens, "greedy tokens",
                 standard="argmax of the same computation")
    verify.close(np.stack(fixed.logits), np.stack(plain.logits), "gemm", dtype,
                 "logits of every step")
