"""Parallel layouts of a LLaMA-3.2-1B-shaped model (random weights), bf16 on GPUs: prefill
latency (512 tokens) and decode tokens/s at batch 1 and 8, for TP = 1, 2, 4 and
TP = 2 x PP = 2, with the all-reduce time per decode step in extra_info. At the smoke and
CPU scales the same code runs a shrunk model on CPU ranks (the loopback communicator),
so the benchmarks cannot rot; only a GPU run's numbers mean anything.

Each configuration first passes the accuracy gate of the model benchmarks (its last
logits against transformers float32 on the same weights, within the calibrated bound of
transformers in the same dtype)."""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from conformance.model.harness import reused
from conformance.model.reference import hf_model
from infinilm_models.runtime import device_count

from .checkpoint import LLAMA_1B, LLAMA_1B_SMOKE, write_checkpoint
from .gate import gate, golden_logits, hf_logits
from .timing import infini_sync, run_benchmark, torch_device_for

LAYOUTS = {"tp1": (1, 1), "tp2": (2, 1), "tp4": (4, 1), "tp2pp2": (2, 2)}
_loaded: dict[tuple, object] = {}


@pytest.fixture(scope="session")
def llama_1b(bench_scale, tmp_path_factory):
    spec = LLAMA_1B if bench_scale.name == "full" else LLAMA_1B_SMOKE
    return write_checkpoint(spec, tmp_path_factory.mktemp("llama-1b"),
                            bf16=spec is LLAMA_1B), spec


def _model(path, dtype: str, device, tp: int, pp: int):
    from infinilm_models import AutoLlamaModel

    key = (str(path), dtype, str(device), tp, pp)
    if key not in _loaded:
        for old in list(_loaded.values()):
            getattr(old, "close", lambda: None)()
        _loaded.clear()  # one at a time: a 1B model per layout would not fit together
        dev = device.type if device.type != "cpu" else "cpu"
        _loaded[key] = reused(AutoLlamaModel.from_pretrained(
            path, dev if tp * pp > 1 else device, dtype, tp=tp, pp=pp, progress=False))
    return _loaded[key]


def _layout_or_unsupported(verify, device, layout: str) -> tuple[int, int]:
    tp, pp = LAYOUTS[layout]
    if device.type != "cpu" and device_count(device.type) < tp * pp:
        verify.unsupported(RuntimeError(f"{layout} needs {tp * pp} {device.type} devices; "
                                        f"this machine has {device_count(device.type)}"))
    return tp, pp


def _gate(verify, tolerances, dtype: str, logits: np.ndarray, path, ids: np.ndarray,
          device, what: str) -> None:
    tdev = torch_device_for(device)
    golden = golden_logits(path, ids, tdev)
    ref = hf_logits(hf_model(str(path), dtype, tdev), ids, tdev)
    gate(verify, tolerances, dtype, logits, ref, golden, what)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_perf_parallel_prefill(benchmark, layout, dtype, infini_device, bench_scale,
                               llama_1b, verify, tolerances):
    tp, pp = _layout_or_unsupported(verify, infini_device, layout)
    path, spec = llama_1b
    seq = 512 if bench_scale.name == "full" else 16
    ids = np.random.default_rng([spec.seed, seq]).integers(3, spec.vocab_size, (1, seq))
    model = _model(path, dtype, infini_device, tp, pp)
    sync = infini_sync(model.device)
    holder = {}

    def fn():
        holder["logits"] = model.forward(ids)
        sync()

    fn()
    _gate(verify, tolerances, dtype, holder["logits"].numpy().astype(np.float64).reshape(1, -1),
          path, ids, infini_device, "prefill")
    group = f"parallel-prefill{seq}-b1-{dtype}"
    if benchmark.disabled:
        benchmark.pedantic(fn)
        info = {}
    else:
        info = run_benchmark(benchmark, fn, lambda: None, bench_scale, group=group,
                             impl=layout, first_call_s=None)
    extra = {"layout": layout, "tp": tp, "pp": pp, "seq": seq, "dtype": dtype,
             "model": spec.name, **({"latency_ms": info["median_s"] * 1e3} if info else {})}
    benchmark.extra_info.update(extra)
    verify.record_perf(group, layout, {**extra, **info})


@pytest.mark.parametrize("batch", [1, 8], ids=["b1", "b8"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_perf_parallel_decode(benchmark, layout, batch, dtype, infini_device, bench_scale,
                              llama_1b, verify, tolerances):
    tp, pp = _layout_or_unsupported(verify, infini_device, layout)
    path, spec = llama_1b
    prompt_len = bench_scale.decode_prompt
    steps = bench_scale.decode_tokens
    rng = np.random.default_rng([spec.seed, batch])
    prompt = rng.integers(3, spec.vocab_size, (batch, prompt_len))
    feed = rng.integers(3, spec.vocab_size, (batch, steps))
    model = _model(path, dtype, infini_device, tp, pp)
    cache = model.new_cache(batch, prompt_len + steps)
    step_s: list[float] = []

    def setup():
        cache.reset()
        model.forward(prompt, cache=cache)
        model.prepare_decode(cache, steps)
        infini_sync(model.device)()
        step_s.clear()

    def fn():
        for i in range(steps):
            t0 = time.perf_counter()
            logits = model.forward(feed[:, i:i + 1], cache=cache)
            logits.numpy()  # the step's result on the host: synchronized
            step_s.append(time.perf_counter() - t0)
        return logits

    setup()
    last = fn().numpy().astype(np.float64).reshape(batch, -1)
    _gate(verify, tolerances, dtype, last, path, np.concatenate([prompt, feed], axis=1),
          infini_device, "decode")
    group = f"parallel-decode{steps}-b{batch}-{dtype}"
    if benchmark.disabled:
        benchmark.pedantic(fn, setup=lambda: (setup(), None)[1])
        info = {}
    else:
        info = run_benchmark(benchmark, fn, lambda: None, bench_scale, group=group,
                             impl=layout, setup=setup)
    extra = {"layout": layout, "tp": tp, "pp": pp, "batch": batch, "prompt": prompt_len,
             "new_tokens": steps, "dtype": dtype, "model": spec.name,
             "step_ms": 1e3 * statistics.median(step_s) if step_s else None}
    if info:
        extra["tokens_per_s"] = batch * steps / info["mean_s"]
    extra["all_reduce_ms_per_step"] = _all_reduce_per_step(model, cache, setup, fn, steps)
    benchmark.extra_info.update(extra)
    verify.record_perf(group, layout, {**extra, **info})


def _all_reduce_per_step(model, cache, setup, fn, steps: int) -> float | None:
    """One more decode loop with the communicators timing every all-reduce (device
    synchronized around each call, so it is not part of the timed rounds)."""
    comms = [c for c in getattr(model, "comms", []) if c is not None]
    if not comms:
        return None
    for c in comms:
        c.timing = True
        c.reset_stats()
    try:
        setup()
        for c in comms:
            c.reset_stats()
        fn()
        seconds = sum(c.stats(0).seconds for c in comms)
    finally:
        for c in comms:
            c.timing = False
    return 1e3 * seconds / steps
