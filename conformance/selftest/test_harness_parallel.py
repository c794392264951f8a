"""Planted sharding bugs fail the parallel check with the layer (and, for the KV cache,
the rank) named; the correct layouts pass. Calls the check's own judging function on a
parallel model whose construction or wiring was broken the way a real bug would be."""

from __future__ import annotations

import pytest

from conformance.judge import TolerancePolicy
from conformance.model.harness import resolve_model
from conformance.model.parallel import judge_parallel
from conformance.model.prompts import prompt_ids
from conformance.model.reference import hf_model
from conformance.plugin.verify import Verify
from infinilm_models import AutoLlamaModel
from infinilm_models.models.llama import parallel

POLICY = TolerancePolicy.load()
MODEL = "tiny-gqa"  # 8 query heads on 2 KV heads, 3 layers: tp2 gives each rank a KV head


def run(par) -> Verify:
    path = resolve_model(MODEL)
    ours = AutoLlamaModel.from_pretrained(path, "cpu", "f32", progress=False)
    golden = hf_model(str(path), "f32", "cpu")
    v = Verify(None, POLICY, None)
    judge_parallel(v, POLICY, "f32", par, ours, golden, golden, prompt_ids(path, 2, 9))
    return v


def failing(v: Verify) -> list[str]:
    return [c.reason for c in v.comparisons if c.counts_against]


def load(monkeypatch=None, slicer=None, tp=2, pp=1):
    if slicer is not None:
        monkeypatch.setattr(parallel, "slicer", slicer)
    return AutoLlamaModel.from_pretrained(resolve_model(MODEL), "cpu", "f32", tp=tp, pp=pp,
                                          progress=False)


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2), (2, 2)])
def test_correct_layouts_pass(tp, pp):
    v = run(load(tp=tp, pp=pp))
    assert not failing(v), failing(v)


def _shifted(kinds: tuple[str, ...]):
    """A slicer that hands rank r the slice of rank r + 1 for the given projections."""
    real = parallel.slicer

    def slicer(config, shape):
        shapes = parallel.split_heads(config, 2)
        other = shapes[(shapes.index(shape) + 1) % len(shapes)]
        right, wrong = real(config, shape), real(config, other)

        def part(name, dims):
            return wrong(name, dims) if name.split(".")[-2] in kinds else right(name, dims)
        return part
    return slicer


def test_o_proj_rows_of_the_wrong_heads_fail_at_layer0_attention(monkeypatch):
    v = run(load(monkeypatch, _shifted(("o_proj",))))
    assert failing(v)
    loc = v.localization[0]
    assert (loc.layer, loc.submodule) == (0, "attention"), loc.description


def test_a_skipped_all_reduce_fails_at_that_layer():
    par = load()
    for t in range(par.tp):
        par.rank(0, t).model.layers[1].all_reduce = None
    v = run(par)
    assert failing(v)
    loc = v.localization[0]
    assert (loc.layer, loc.submodule) == (1, "attention"), loc.description


def test_a_wrong_kv_head_slice_names_the_rank_and_layer(monkeypatch):
    v = run(load(monkeypatch, _shifted(("k_proj", "v_proj"))))
    cache = next(c for c in v.comparisons if c.what.startswith("KV cache per rank"))
    assert not cache.passed and "rank 0 layers.0.key_cache" in cache.reason, cache.reason
    loc = v.localization[0]
    assert (loc.layer, loc.submodule) == (0, "attention"), loc.description
