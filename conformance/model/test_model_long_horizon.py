"""Long-horizon agreement: decoding through the KV cache for hundreds of positions, teacher
forced (every step is fed the text's next token, not a prediction, so both sides compute
the same sequence whatever they predict), each step's logits against transformers'.

A defect that needs many cached positions to show (a cache slot off by one past a block
boundary, a RoPE table too short, a window or a dynamic-RoPE switch at the wrong length,
the "garbled output after a few hundred tokens" of InfiniLM's reports) passes every short
check; here every position up to N is a step of its own. tt-metal gates its models the
same way (512 positions, top-1 / top-5 against full-precision transformers).

Per step (numbered by the position of the token fed, so step 256 is the first token a
256-position block boundary would displace):
  * top-1 agreement: our argmax is the golden's;
  * top-5 containment: the golden's argmax is among our five largest logits;
  * logits NMSE against the golden.
Judged on the disagreement rates, calibrated on transformers' own run in the tested dtype
(ours <= k x transformers' + floor, tolerances.toml `long_horizon_top1`/`_top5`: the
floor on agreement is what a correct implementation measures minus a stated margin), the
mean NMSE as every logits check (`model_logits`), and each step's NMSE against the loose
per-tensor gate (`model_activations_gate`). Where something fails, the first failing
step is re-run with every capture point on both sides and the first layer and sub-module
out of bound (the KV cache included) is named (checks.compare_capture).

CPU: N = 300 positions on the tiny fixtures (at most their max_position_embeddings:
256 on the older ones); SmolLM2 only on a GPU (N = 520 there, every model).
"""

from __future__ import annotations

import numpy as np

from conformance.judge import calibrated_series, token_nmse

from .checks import compare_capture
from .faithful import alternative
from .harness import hf_capture, our_capture, points_of, reset_rope_state
from .prompts import prompt_ids
from .reference import Reference, cached

PREFIX = 16
POSITIONS = {"cpu": 300, "gpu": 520}


def positions(model_m, infini_device) -> int:
    want = POSITIONS["cpu" if infini_device.type == "cpu" else "gpu"]
    return min(want, model_m.max_cache_len)


def hf_steps(m: Reference, ids: np.ndarray, prefix: int) -> np.ndarray:
    """transformers' teacher-forced decode (prefill of `prefix` tokens, then one token
    per step) from the loaded RoPE state: last logits of each step [batch, steps, vocab]."""
    import torch
    from transformers import DynamicCache

    reset_rope_state(m)
    model = m.model
    cache, rows = DynamicCache(), []
    with torch.inference_mode():
        t = torch.as_tensor(ids, device=model.device)
        for a, b in chunks(prefix, ids.shape[1]):
            out = model(t[:, a:b], past_key_values=cache, use_cache=True).logits[:, -1]
            rows.append(out.to("cpu", torch.float64).numpy())
    return np.stack(rows, axis=1)


@cached
def hf_golden(golden: Reference, ids: np.ndarray, prefix: int) -> np.ndarray:
    """The golden's logits per step (one entry for every dtype under test)."""
    return hf_steps(golden, ids, prefix)


@cached
def hf_reference_metrics(golden: Reference, ref: Reference, ids: np.ndarray,
                         prefix: int) -> dict[str, np.ndarray]:
    """transformers in the tested dtype against the golden, per step (step_metrics): what
    the dtype costs a mature implementation; only the metrics are kept (SmolLM2's logits of
    505 steps are 200 MB in float64)."""
    return step_metrics(hf_steps(ref, ids, prefix), hf_golden(golden, ids, prefix))


def step_metrics(ours: np.ndarray, golden: np.ndarray) -> dict[str, np.ndarray]:
    """Per step (over the batch rows): top-1 agreement, top-5 containment of the golden's
    argmax, and the logits' NMSE; arrays [steps]."""
    want = golden.argmax(-1)  # [batch, steps]
    top5 = np.argsort(-ours, axis=-1)[..., :5]
    return {"top1": (ours.argmax(-1) == want).mean(axis=0),
            "top5": (top5 == want[..., None]).any(-1).mean(axis=0),
            "nmse": np.array([token_nmse(ours[:, i], golden[:, i])
                              for i in range(golden.shape[1])])}


def chunks(prefix: int, stop: int) -> list[tuple[int, int]]:
    """The prefill, then one position per step, up to (not including) `stop`."""
    return [(0, prefix)] + [(i, i + 1) for i in range(prefix, stop)]


def our_teacher_forced(model, ids: np.ndarray, prefix: int, stop: int | None = None,
                       capture_last: bool = False, inject: dict | None = None):
    """Ours through the KV cache: logits per step [batch, steps, vocab] for the tokens
    before position `stop` (default all); `capture_last`: instead, the captures of the
    last step (caches included), with `inject` replacing its capture points."""
    reset_rope_state(model)
    batch, n = ids.shape
    parts = chunks(prefix, n if stop is None else stop)
    cache = model.new_cache(batch, n)
    rows = []
    for k, (a, b) in enumerate(parts):
        if capture_last and k == len(parts) - 1:
            return our_capture(model, ids[:, a:b], cache=cache, inject=inject)
        rows.append(model.forward(ids[:, a:b], cache=cache).numpy()[:, -1].astype(np.float64))
    return np.stack(rows, axis=1)


def test_model_long_horizon(model_name, model_path, dtype, runtimes, verify, tolerances,
                            infini_device):
    golden_m, ref_m, ours_m = runtimes
    n = positions(ours_m, infini_device)
    ids = prompt_ids(model_path, 1, n, verify)
    golden = hf_golden(golden_m, ids, PREFIX)
    ref = step_metrics(golden, golden) if ref_m is golden_m else \
        hf_reference_metrics(golden_m, ref_m, ids, PREFIX)
    # f16/bf16: the logits bounds are on the spread of two correct implementations
    # (transformers and the same with every gemm rounded the other way, faithful.py); the
    # agreement rates keep their own calibration on transformers (long_horizon_top1/5)
    alt_m = alternative(ref_m)
    alt = hf_reference_metrics(golden_m, alt_m, ids, PREFIX) if alt_m is not None else None
    ours = our_teacher_forced(ours_m, ids, PREFIX)
    mine = step_metrics(ours, golden)
    # step i of the arrays is the token at position PREFIX - 1 + i (the prefill's last)
    labels = [f"step {PREFIX - 1 + i}" for i in range(golden.shape[1])]

    verify.finite(f"logits of {len(labels)} teacher-forced steps", ours)
    top1 = verify.calibrated_value(
        f"top-1 disagreement with the golden over positions {PREFIX - 1}..{n - 1}",
        1.0 - float(mine["top1"].mean()), 1.0 - float(ref["top1"].mean()),
        "long_horizon_top1", dtype, "top1_disagreement")
    top5 = verify.calibrated_value(
        "the golden's top-1 outside our top-5", 1.0 - float(mine["top5"].mean()),
        1.0 - float(ref["top5"].mean()), "long_horizon_top5", dtype, "top5_miss")
    mean = verify.calibrated_value(
        "mean logits NMSE per step", float(mine["nmse"].mean()), float(ref["nmse"].mean()),
        "model_logits", dtype, "nmse",
        alternative=float(alt["nmse"].mean()) if alt is not None else None)
    series, ok = calibrated_series("logits NMSE of each step (gate)", labels,
                                   list(mine["nmse"]), list(ref["nmse"]),
                                   tolerances.calibrated("model_activations_gate", dtype),
                                   alternative=list(alt["nmse"]) if alt is not None else None)
    verify.keep(series)
    first = first_bad_step(ok, mine, ref, any(c.counts_against for c in (top1, top5, mean)))
    verify.param(positions=n, prefix=PREFIX,
                 first_bad_step=None if first is None else PREFIX - 1 + first)
    verify.measure("agreement with the golden over the teacher-forced steps",
                   {"top1": float(mine["top1"].mean()), "top5": float(mine["top5"].mean()),
                    "mean_nmse": float(mine["nmse"].mean())},
                   {"top1": float(ref["top1"].mean()), "top5": float(ref["top5"].mean()),
                    "mean_nmse": float(ref["nmse"].mean())},
                   "reference: transformers in the same dtype")
    if first is not None:
        localize(verify, tolerances, dtype, golden_m, ref_m, ours_m, ids, PREFIX + first)


def first_bad_step(ok: list[bool], mine: dict, ref: dict, rates_failed: bool) -> int | None:
    """The first step whose NMSE breaches the gate; where only the rates fail, the first
    step where our top-1 differs from the golden's while transformers' agrees."""
    if not all(ok):
        return ok.index(False)
    if rates_failed:
        worse = np.flatnonzero((mine["top1"] < ref["top1"]) | (mine["top5"] < ref["top5"]))
        if len(worse):
            return int(worse[0])
    return None


def localize(verify, tolerances, dtype: str, golden_m, ref_m, ours_m, ids: np.ndarray,
             stop: int) -> None:
    """Every capture point of the first failing step (the one whose last token is at
    position stop - 1), ours and transformers' after the same teacher-forced steps, the
    KV caches included."""
    from transformers import DynamicCache

    parts = chunks(PREFIX, stop)
    theirs = {}
    # isolated: the last step's sub-modules fed the golden's values (each side's own cache)
    for name, m, iso in (("golden", golden_m, False), ("ref", ref_m, False),
                         ("ref_iso", ref_m, True)):
        if m is golden_m and name != "golden":
            theirs[name] = theirs["golden"]
            continue
        reset_rope_state(m)
        cache = DynamicCache()
        for k, (a, b) in enumerate(parts):
            last = k == len(parts) - 1
            theirs[name] = hf_capture(m, ids[:, a:b], cache=cache,
                                      inject=theirs["golden"] if iso and last else None)
    ours = our_teacher_forced(ours_m, ids, PREFIX, stop, capture_last=True)
    ours_iso = our_teacher_forced(ours_m, ids, PREFIX, stop, capture_last=True,
                                  inject=theirs["golden"])
    found = compare_capture(
        points_of(ours_m), ours=ours, ref=theirs["ref"], golden=theirs["golden"],
        ours_iso=ours_iso, ref_iso=theirs["ref_iso"],
        cal=tolerances.calibrated("model_activations", dtype),
        gate=tolerances.calibrated("model_activations_gate", dtype),
        phase="decode" if len(parts) > 1 else "prefill", step=stop - 1)
    # where it goes wrong is what is recorded (the step's comparisons are judged by the
    # per-step bounds above, not again here)
    verify.localization.extend(found.localizations)
