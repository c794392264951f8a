"""Deliberately broken models must fail the right check, and the first-divergence report
must name the right layer and sub-module. Each breaks one thing the way a real
implementation bug would, through the model's own structure (no change to the harness)."""

from __future__ import annotations

from conformance.judge import TolerancePolicy, calibrated_value
from conformance.model.checks import compare_capture
from conformance.model.harness import hf_capture, our_capture, points_of, resolve_model
from conformance.model.prompts import CACHE_PREFIX as PREFIX
from conformance.model.prompts import CACHE_STEPS as STEPS
from conformance.model.prompts import prompt_ids
from conformance.model.reference import hf_model
from infinilm_models import AutoLlamaModel
from infinilm_models.models.llama.kv_cache import KVCache
from infinilm_models.runtime import ops

POLICY = TolerancePolicy.load()
MODEL = "tiny-gqa"  # 3 layers, 8 query heads on 2 KV heads: every bug below is visible


def fresh_model():
    return AutoLlamaModel.from_pretrained(resolve_model(MODEL), "cpu", "f32", progress=False)


def localize(model, ids, *, ours_cache=None, hf_cache=None, iso_cache=None):
    """The first localization of an f32 prefill (or a decode step, given caches; with
    `iso_cache`, a second cache in the same state, the isolated run too): golden ==
    reference on the CPU in f32."""
    golden_m = hf_model(str(resolve_model(MODEL)), "f32", "cpu")
    golden = hf_capture(golden_m, ids, cache=hf_cache)
    ours = our_capture(model, ids, cache=ours_cache)
    iso = None if iso_cache is None else our_capture(model, ids, cache=iso_cache,
                                                     inject=golden)
    found = compare_capture(
        points_of(model), ours=ours, ref=golden, golden=golden, ours_iso=iso,
        ref_iso=None if iso is None else golden,
        cal=POLICY.calibrated("model_activations", "f32"),
        gate=POLICY.calibrated("model_activations", "f32"), phase="prefill")
    return found.rows, (found.localizations[0] if found.localizations else None)


def ids():
    return prompt_ids(resolve_model(MODEL), 2, 11)


def test_correct_model_passes():
    _, first = localize(fresh_model(), ids())
    assert first is None, first.description


def test_wrong_rope_algorithm_is_localized_to_layer0_attention():
    model = fresh_model()
    model.rope_algo = ops.RoPEAlgo.GPT_J
    _, first = localize(model, ids())
    assert first is not None and (first.layer, first.submodule) == (0, "attention"), first
    assert "rope" in first.description


def test_wrong_gqa_head_mapping_is_localized_to_layer0_attention(monkeypatch):
    from infinilm_models.models.llama import attention

    real = attention._Views.of.__func__

    def wrong(cls, attn, bufs):  # query head h read against KV head h % kv_heads
        v = real(cls, attn, bufs)
        b, s, d, w = bufs.batch, bufs.seq, attn.head_dim, bufs.qkv.shape[1]
        v.q_src = bufs.qkv.as_strided((b, s, attn.group, attn.num_kv_heads, d),
                                      (s * w, w, attn.num_kv_heads * d, d, 1)
                                      ).permute(0, 3, 2, 1, 4)
        v.q_heads = bufs.q_heads
        return v

    monkeypatch.setattr(attention._Views, "of", classmethod(wrong))
    model = fresh_model()
    _, first = localize(model, ids())
    assert first is not None and (first.layer, first.submodule) == (0, "attention"), first


def test_missing_residual_in_layer1_is_localized():
    from infinilm_models.models.llama.decoder_layer import AddThenNorm

    class SkipAdd(AddThenNorm):  # the attention's residual add never happens
        def __call__(self, bufs, out, record, name):
            if record:
                record(name, bufs.hidden)
            self.norm(bufs)

    model = fresh_model()
    layer = model.model.layers[1]
    layer.residual_attn = SkipAdd(layer.post_attention_layernorm, layer.eps)
    _, first = localize(model, ids())
    assert first is not None and (first.layer, first.submodule) == (1, "attention residual"), \
        first


class OffByOneCache(KVCache):
    """Writes each decode step's K/V one position too early (over the last cached token)."""

    def slot(self, layer, start, seq):
        return super().slot(layer, start - 1 if start > 0 else start, seq)


def test_kv_cache_off_by_one_fails_cache_check_and_is_localized():
    import torch  # noqa: F401 - the reference side
    from transformers import DynamicCache

    model = fresh_model()
    toks = prompt_ids(resolve_model(MODEL), 2, PREFIX + STEPS)
    # The prefill is right (nothing cached yet), so full-sequence checks cannot see it ...
    _, first = localize(model, toks[:, :PREFIX])
    assert first is None
    # ... the cached-vs-recompute check does:
    cache = OffByOneCache(model.config, 2, PREFIX + STEPS, model.device, model.dtype)
    model.forward(toks[:, :PREFIX], cache=cache)
    step = model.forward(toks[:, PREFIX:PREFIX + 1], cache=cache).numpy()[:, 0]
    full = model.forward(toks[:, :PREFIX + 1]).numpy()[:, 0]
    from conformance.judge import error_metrics

    result = calibrated_value("cached vs recompute", error_metrics(step, full)["nmse"], 0.0,
                              POLICY.calibrated("cache_vs_recompute", "f32"), "nmse")
    assert not result.passed
    # and localizing the decode step against transformers' cached step names layer 0's KV
    # cache, where the wrong write is (not the attention that reads it), and says it starts
    # there (the isolated decode step writes it wrong too).
    caches = []
    for _ in range(2):
        caches.append(OffByOneCache(model.config, 2, PREFIX + STEPS, model.device, model.dtype))
        model.forward(toks[:, :PREFIX], cache=caches[-1])
    golden_m = hf_model(str(resolve_model(MODEL)), "f32", "cpu")
    hf_cache = DynamicCache()
    hf_capture(golden_m, toks[:, :PREFIX], cache=hf_cache)
    _, first = localize(model, toks[:, PREFIX:PREFIX + 1], ours_cache=caches[0],
                        hf_cache=hf_cache, iso_cache=caches[1])
    assert first is not None, "no localization"
    assert (first.layer, first.submodule, first.origin) == (0, "kv cache", "starts here"), \
        first.description
