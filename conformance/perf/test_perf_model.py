"""Model-level benchmarks: SmolLM2-135M (seeded random weights) on InfiniCore vs
transformers eager, same device and dtype, `use_cache=True`, `torch.inference_mode()`.

* prefill latency: one forward of `seq` prompt tokens (batch 1), device-synchronized;
* time to first token: prefill + picking the token + having its id on the host;
* decode: `decode_tokens` single-token steps after a `decode_prompt`-token prefill (the
  prefill is outside the timed region), batch 1 and 8, tokens/s = batch * steps / time.
  Both sides are fed the same (teacher-forced) token ids, so the work per step does not
  depend on which token a dtype's rounding picks; ours still picks each step's token on
  the device and reads it back, as generate() does, HF takes the argmax on the device.
  Per step we record the host issue time (until forward() returns, no synchronization)
  and the step time (until the token is on the host / the device is idle), the
  descriptors created inside the timed loop, and the peak device memory.

Accuracy gate, per configuration: the last logits of ours and of transformers in the
benchmarked dtype are judged against transformers float32 on the same device and
weights (NMSE within the suite's calibrated model_logits bound; the top-1 token equal
unless the golden's top-2 margin is a near-tie per generation_margin).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from conformance.model.harness import reused
from conformance.model.reference import hf_model
from infinilm_models.runtime import Tensor, memory, ops
from infinilm_models.runtime.ops._base import descriptors_created

from .checkpoint import spec_with_layers, write_checkpoint
from .gate import gate, golden_logits, hf_logits
from .timing import (
    infini_sync,
    ratio_to,
    run_benchmark,
    torch_device_for,
    torch_note,
    torch_sync,
)

_models: dict[tuple, object] = {}


@pytest.fixture(scope="session")
def perf_checkpoint(bench_scale, tmp_path_factory):
    spec = spec_with_layers(bench_scale.layers)
    return write_checkpoint(spec, tmp_path_factory.mktemp("perf-ckpt")), spec


def ours_model(path, dtype: str, device):
    key = (str(path), dtype, str(device))
    if key not in _models:
        from infinilm_models import AutoLlamaModel

        _models.clear()  # one model at a time: 30 layers x 3 dtypes would not fit a small host
        _models[key] = reused(AutoLlamaModel.from_pretrained(path, device, dtype,
                                                            progress=False))
    return _models[key]


def _ids(spec, batch: int, seq: int, salt: int = 0) -> np.ndarray:
    rng = np.random.default_rng([spec.seed, batch, seq, salt])
    return rng.integers(3, spec.vocab_size, (batch, seq), dtype=np.int64)


def _pick_tokens(logits: Tensor, results: Tensor, out: np.ndarray) -> None:
    """What generate() does per step: argmax per row on the device, all ids to the host
    in one copy."""
    for b in range(out.shape[0]):
        ops.random_sample(results.select(0, b), logits.select(0, b).select(0, 0),
                          0.0, 0.0, 1, 1.0)
    out[:] = results.numpy()


def _torch_info(device, tdev: str) -> dict:
    """Which torch the "vs hf" ratio is against (and a note when it is CPU torch against an
    accelerator)."""
    note = torch_note(device, tdev)
    return {"torch_device": tdev, **({"torch_note": note} if note else {})}


def _peak_info(impl: str, device, tdev: str) -> dict:
    if impl.startswith("ours"):  # ours eager and ours replayed: our own allocator's count
        return {"peak_device_memory_bytes": memory.max_allocated_bytes(device),
                "peak_memory_source": "InfiniCore DeviceBuffers (weights, caches, buffers "
                                      "of every shape this model ran)"}
    import torch

    if tdev.startswith("cuda"):
        return {"peak_device_memory_bytes": torch.cuda.max_memory_allocated(tdev),
                "peak_memory_source": "torch.cuda.max_memory_allocated"}
    return {"peak_device_memory_bytes": None, "peak_memory_source": "n/a for torch on CPU"}


def _reset_peaks(device, tdev: str) -> None:
    memory.reset_peak(device)
    if tdev.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(tdev)


def _finish(benchmark, verify, info: dict, group: str, impl: str, extra: dict) -> None:
    from infinilm_models.runtime.capabilities import current_build

    build = current_build()
    # which InfiniCore: two builds' runs of one benchmark are told apart by this
    extra = {**extra, "infinicore": build.identity.label, "infinicore_key": build.identity.key}
    if impl.startswith("ours") and _models:
        extra["fused"] = list(next(iter(_models.values())).fused.names)
    benchmark.extra_info.update(extra)
    perf = {"group": group, "impl": impl, **extra, **info}
    # ours against transformers in the same run: eager against eager, and the replayed
    # step against compiled transformers (both graphs): < 1 is ours faster
    for mine, theirs in (("ours", "hf"), ("ours_graph", "hf_compiled")):
        ratio = ratio_to(group, mine, theirs) if info and impl == mine else None
        if ratio is not None:
            benchmark.extra_info[f"time_ratio_vs_{theirs}"] = ratio
            perf[f"time_ratio_vs_{theirs}"] = ratio
    verify.record_perf(group, impl, perf)


def _run_once_or_time(benchmark, fn, sync, scale, group, impl, setup=None, first=False):
    """Timing off: pytest-benchmark runs `fn` once. On: a first untimed call (when asked),
    then the timed rounds."""
    if benchmark.disabled:
        benchmark.pedantic(fn, setup=(lambda: (setup(), None)[1]) if setup else None)
        return {}
    if first:
        if setup:
            setup()
        fn()
    return run_benchmark(benchmark, fn, sync, scale, group=group, impl=impl, setup=setup,
                         min_rounds=scale.min_rounds)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    from .timing import resolve_scale

    scale = resolve_scale(metafunc.config)
    if "kind" in metafunc.fixturenames:
        cases = [("prefill", s) for s in scale.model_prefill_seqs]
        cases.append(("ttft", scale.model_prefill_seqs[-1]))
        metafunc.parametrize("kind,seq", cases, ids=[f"{k}-seq{s}" for k, s in cases])
    if "decode_batch" in metafunc.fixturenames:
        metafunc.parametrize("decode_batch", scale.model_batches,
                             ids=[f"b{b}" for b in scale.model_batches])
    if "context" in metafunc.fixturenames:
        contexts = scale.contexts()
        metafunc.parametrize("context", contexts, ids=[c[0] for c in contexts])


@pytest.mark.parametrize("impl", ["hf", "ours"])
def test_perf_prefill(benchmark, kind, seq, impl, dtype, infini_device, bench_scale,
                      perf_checkpoint, verify, tolerances):
    """Prefill latency (batch 1, logits of the last position on the device), or time to
    first token (the same plus the pick and its id on the host)."""
    import torch

    path, spec = perf_checkpoint
    tdev = torch_device_for(infini_device)
    ids = _ids(spec, 1, seq)
    group = f"model-{kind}-seq{seq}-b1-{dtype}"
    golden = golden_logits(path, ids, tdev)
    hf = hf_model(str(path), dtype, tdev)
    ref = hf_logits(hf, ids, tdev)
    if impl == "ours":
        model = ours_model(path, dtype, infini_device)
        sync = infini_sync(infini_device)
        results = Tensor.zeros((1,), "i32", infini_device)
        picked = np.zeros(1, np.int64)
        holder = {}

        def fn():
            logits = model.forward(ids)
            if kind == "ttft":
                _pick_tokens(logits, results, picked)  # the id reaches the host: synced
            else:
                sync()
            holder["logits"] = logits
    else:
        ids_t = torch.tensor(ids, device=tdev)
        sync = torch_sync(tdev)

        def fn():
            with torch.inference_mode():
                out = hf(ids_t, use_cache=True)
                if kind == "ttft":
                    holder["id"] = out.logits[:, -1].argmax(-1).item()  # synchronizes
                else:
                    sync()

        holder = {}
    _reset_peaks(infini_device, tdev)
    # The first call creates buffers, descriptors and the scratch cache outside the timing
    # (or, with timing off, is the one run); its output is what the gate judges.
    info = _run_once_or_time(benchmark, fn, sync, bench_scale, group, impl, first=True)
    if impl == "ours":
        last = holder["logits"].numpy().reshape(1, -1).astype(np.float64)
        gate(verify, tolerances, dtype, last, ref, golden, kind)
        if kind == "ttft":
            assert picked[0] == last[0].argmax()
    else:
        gate(verify, tolerances, dtype, None, ref, golden, kind)
    _finish(benchmark, verify, info, group, impl,
            {"kind": kind, "seq": seq, "batch": 1, "dtype": dtype, "impl": impl,
             "layers": spec.num_hidden_layers, "scale": bench_scale.name,
             **_peak_info(impl, infini_device, tdev), **_torch_info(infini_device, tdev)})


@pytest.mark.parametrize("impl", ["hf", "hf_compiled", "ours", "ours_graph"])
def test_perf_decode(benchmark, decode_batch, context, impl, dtype, infini_device,
                     bench_scale, perf_checkpoint, verify, tolerances):
    """`decode_tokens` single-token steps after a prefill; tokens/s and the per-step split
    between host issue time and synchronized step time.

    hf: transformers eager with a DynamicCache. hf_compiled: transformers' fastest path on
    CUDA, a StaticCache and torch.compile(mode="reduce-overhead", fullgraph=True) (its
    decode step replayed as one CUDA graph), compile and warm-up outside the timing and
    recorded. ours: the eager step. ours_graph: the fixed-shape step replayed as a
    captured graph (decode_step.py), with the time from from_pretrained to the first
    replayed token recorded. `context`: (id, prompt tokens, positions allocated) of the
    scale (the prompt + new tokens where 0): the step's cost at a short context, a long
    one, and a long allocation holding little."""
    import torch

    from infinilm_models.runtime.graph import graph_backend

    path, spec = perf_checkpoint
    if impl == "ours_graph" and graph_backend(infini_device) is None:
        verify.unsupported(RuntimeError(f"{infini_device.type}: no graph API"))
    if impl == "hf_compiled" and not torch_device_for(infini_device).startswith("cuda"):
        verify.unsupported(RuntimeError("torch.compile's CUDA graphs need a CUDA device"))
    batch, steps = decode_batch, bench_scale.decode_tokens
    name, prompt_len, allocated = context
    allocated = allocated or prompt_len + steps
    tdev = torch_device_for(infini_device)
    prompt = _ids(spec, batch, prompt_len)
    feed = _ids(spec, batch, steps, salt=1)
    group = f"model-decode{steps}-{name}-b{batch}-{dtype}"
    issue: list[float] = []
    step: list[float] = []
    state: dict = {}
    if impl in ("ours", "ours_graph"):
        model = ours_model(path, dtype, infini_device)
        cache = model.new_cache(batch, allocated)
        results = Tensor.zeros((batch,), "i32", infini_device)
        picked = np.zeros(batch, np.int64)
        if impl == "ours_graph":
            state["decoder"] = model.fixed_decoder(cache, graph=True)
            state["first_replay_s"] = _first_replayed_token_s(path, dtype, infini_device,
                                                              prompt, feed)

        def setup():
            cache.reset()
            model.forward(prompt, cache=cache)
            if impl == "ours":
                model.prepare_decode(cache, steps)  # as generate(): no descriptor in the loop
            infini_sync(infini_device)()
            issue.clear()
            step.clear()
            state["desc0"] = descriptors_created()

        def fn():
            decoder = state.get("decoder")
            for i in range(steps):
                t0 = time.perf_counter()
                logits = decoder.step(feed[:, i]) if decoder is not None else \
                    model.forward(feed[:, i:i + 1], cache=cache)
                t1 = time.perf_counter()
                _pick_tokens(logits, results, picked)  # D2H of the ids: the step's sync
                t2 = time.perf_counter()
                issue.append(t1 - t0)
                step.append(t2 - t0)
            state["logits"] = logits
            state["desc"] = descriptors_created() - state["desc0"]
    elif impl == "hf_compiled":
        fn, setup = _compiled_hf(path, dtype, tdev, prompt, feed, state, issue, step,
                                 allocated)
    else:
        from transformers import DynamicCache

        hf = hf_model(str(path), dtype, tdev)
        prompt_t, feed_t = torch.tensor(prompt, device=tdev), torch.tensor(feed, device=tdev)
        sync = torch_sync(tdev)

        def setup():
            with torch.inference_mode():
                state["cache"] = DynamicCache(config=hf.config)
                hf(prompt_t, past_key_values=state["cache"], use_cache=True)
            sync()
            issue.clear()
            step.clear()

        def fn():
            with torch.inference_mode():
                for i in range(steps):
                    t0 = time.perf_counter()
                    out = hf(feed_t[:, i:i + 1], past_key_values=state["cache"], use_cache=True)
                    t1 = time.perf_counter()
                    out.logits[:, -1].argmax(-1)  # stays on the device, as a plain loop does
                    sync()  # measurement only: the step's device time, to split issue/step
                    t2 = time.perf_counter()
                    issue.append(t1 - t0)
                    step.append(t2 - t0)
                state["logits"] = out.logits
            sync()

    _reset_peaks(infini_device, tdev)
    info = _run_once_or_time(benchmark, fn, lambda: None, bench_scale, group, impl,
                             setup=setup, first=True)
    # Gate: the last step's logits against transformers float32 on the whole sequence.
    full = np.concatenate([prompt, feed], axis=1)
    golden = golden_logits(path, full, tdev)
    ref = hf_logits(hf_model(str(path), dtype, tdev), full, tdev)
    if impl in ("ours", "ours_graph"):
        last = state["logits"].numpy().reshape(batch, -1).astype(np.float64)
        gate(verify, tolerances, dtype, last, ref, golden, "decode")
        verify.exact(picked, last.argmax(-1), "picked ids", standard="integer output")
    else:
        last = state["logits"][:, -1].to("cpu", torch.float64).numpy()
        gate(verify, tolerances, dtype, last, ref, golden, "decode")
    extra = {"kind": "decode", "batch": batch, "prompt": prompt_len, "new_tokens": steps,
             "context": name, "allocated": allocated,
             "dtype": dtype, "impl": impl, "layers": spec.num_hidden_layers,
             "scale": bench_scale.name,
             # Medians over the last round's steps, in ms.
             "host_issue_ms": 1e3 * statistics.median(issue),
             "step_ms": 1e3 * statistics.median(step),
             **_peak_info(impl, infini_device, tdev), **_torch_info(infini_device, tdev)}
    if impl in ("ours", "ours_graph"):
        # Attention shapes grow with the cache: a non-zero count means descriptor creation
        # inside the decode loop (measured over the last timed round).
        extra["descriptors_created_in_loop"] = state["desc"]
        extra["op_calls_per_step"] = _calls_per_step(model, cache, feed[:, :1], state)
    if impl == "ours_graph":
        d = state["decoder"]
        c = d.current
        extra.update(graphs_per_step=c.graphs if c else 0,
                     eager_calls_in_step=c.eager_calls if c else 0,
                     graph_api=getattr(c.backend, "name", None) if c else None,
                     spans_captured=d.graphs, last_span=d.last_span,
                     first_replayed_token_s_after_load=state["first_replay_s"])
    if impl == "hf_compiled":
        extra.update(compile_and_warmup_s=state.get("compile_s"))
    if info:
        extra["tokens_per_s"] = batch * steps / info["mean_s"]
    _finish(benchmark, verify, info, group, impl, extra)


def _first_replayed_token_s(path, dtype: str, device, prompt, feed) -> float:
    """Seconds from from_pretrained returning to the first token of a replayed graph (the
    prefill, one eager step, the capture and one replay included)."""
    from infinilm_models import AutoLlamaModel

    m = AutoLlamaModel.from_pretrained(path, device, dtype, progress=False)
    t0 = time.perf_counter()
    cache = m.new_cache(prompt.shape[0], prompt.shape[1] + 2)
    m.forward(prompt, cache=cache)
    d = m.fixed_decoder(cache, graph=True)
    d.step(feed[:, 0])
    logits = d.step(feed[:, 1])
    logits.numpy()
    seconds = time.perf_counter() - t0
    d.close()
    return seconds


def _calls_per_step(model, cache, token, state) -> int:
    """InfiniCore op calls in one decode step (a replayed graph counts as its eager calls
    plus one launch per graph): counted with an op hook on one extra step."""
    from infinilm_models.runtime.ops._base import CachedOp

    d = state.get("decoder")
    if d is not None and d.current is not None:
        return d.current.eager_calls + d.current.graphs
    count = [0]

    def hook(*_):
        count[0] += 1

    cache.truncate(cache.length - 1) if cache.length else None
    CachedOp.hooks = CachedOp.hooks + (hook,)
    try:
        model.forward(token, cache=cache)
    finally:
        CachedOp.hooks = tuple(h for h in CachedOp.hooks if h is not hook)
    return count[0]


def _compiled_hf(path, dtype: str, tdev: str, prompt, feed, state, issue, step,
                 allocated: int):
    """transformers with a StaticCache and torch.compile(mode="reduce-overhead",
    fullgraph=True): a manual loop marking each step, the argmax cloned out of the graph's
    memory. Compilation and warm-up happen here, outside the timing."""
    import torch
    from transformers import StaticCache

    hf = hf_model(str(path), dtype, tdev)
    batch, prompt_len = prompt.shape
    steps = feed.shape[1]
    cache = StaticCache(config=hf.config, max_cache_len=allocated)
    compiled = torch.compile(hf.forward, mode="reduce-overhead", fullgraph=True)
    prompt_t, feed_t = torch.tensor(prompt, device=tdev), torch.tensor(feed, device=tdev)

    def setup():
        with torch.inference_mode():  # the cache's tensors are inference tensors
            cache.reset()
            hf(prompt_t, past_key_values=cache, use_cache=True,
               cache_position=torch.arange(prompt_len, device=tdev))
        torch.cuda.synchronize(tdev)
        issue.clear()
        step.clear()

    def fn():
        with torch.inference_mode():
            for i in range(steps):
                t0 = time.perf_counter()
                torch.compiler.cudagraph_mark_step_begin()
                out = compiled(feed_t[:, i:i + 1], past_key_values=cache, use_cache=True,
                               cache_position=torch.tensor([prompt_len + i], device=tdev))
                t1 = time.perf_counter()
                out.logits[:, -1].argmax(-1).clone()
                torch.cuda.synchronize(tdev)
                t2 = time.perf_counter()
                issue.append(t1 - t0)
                step.append(t2 - t0)
            state["logits"] = out.logits.clone()

    t0 = time.perf_counter()
    for _ in range(3):  # compile, record the graphs, replay
        setup()
        fn()
    state["compile_s"] = time.perf_counter() - t0
    return fn, setup
