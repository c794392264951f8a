"""The judge: every pass/fail decision of the suite is made here, and only here.

Checks state *what* they compare (`verify.close(out, ref, "gemm", dtype)`); how that is
decided lives in this module and in one data file, `tolerances.toml`. Every judgement
returns a `record.Comparison` carrying the metrics, the bound and the reason, so the
report shows why, and a known defect's envelope can be applied to it afterwards.

Policy
------
* **Non-finite values fail.** A NaN/Inf on either side (ours or the reference) fails the
  comparison, naming the side and the first index. Two implementations that both emit
  NaN do not agree; they are both broken.
* **Elementwise** (op level, reference = float64 on the very inputs the op got):
  every element |a - e| <= atol + rtol |e|, and NMSE = sum((a-e)^2) / sum(e^2) <= nmse.
* **Scale bias** (op level, floating outputs of >= 256 elements): a correct kernel's
  rounding errors are unbiased, so the regression slope <a, e> / <e, e> is 1 up to noise.
  |slope - 1| must stay within 8 standard errors of that noise (estimated from the
  errors themselves) or the floor max(u / 4, 64 u_f32), u the dtype's unit roundoff.
  This sees a systematic 0.2% scale error in bf16, where NMSE (4e-6 against a bf16
  rounding floor of 5e-6) cannot. Any other rounding, reduction order or tiling passes.
* **Calibrated** (model level): ours-vs-golden <= k x (transformers in the tested dtype
  vs golden) + floor. The golden is transformers in float32 on the CPU; the bound is
  earned from what the dtype costs a mature implementation on the same input. In f16/bf16
  k multiplies the spread of correct implementations (`spread`: the larger error of
  transformers' and of its faithful-rounding alternative, model/faithful.py).
* **Exact**, only where a standard demands it: integer outputs (token ids), copies
  (rearrange), argmax (any of the tied maxima is right).
* **Properties**: IEEE 754 mandates correctly rounded add/mul; "not correctly rounded"
  fails the run but is reported as the property it is, with the ulp error, not as a
  wrong result. Properties no standard mandates (determinism across calls, an exact 0
  rather than a subnormal in a masked position) are *findings*: shown, never failing.
* **Near tie**: greedy tokens that differ from the reference side's are accepted in
  f16/bf16 only at the first divergence and only where the reference's top-2 logit
  margin there is below the dtype's `generation_margin` (`greedy_tokens`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .record import Bound, Comparison, Generation

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_TOLERANCES = Path(__file__).with_name("tolerances.toml")
# Unit roundoff (half the spacing of floats in [1, 2)) of each dtype.
UNIT_ROUNDOFF = {"f32": 2.0 ** -24, "f16": 2.0 ** -11, "bf16": 2.0 ** -8, "f64": 2.0 ** -53}
SMALLEST_NORMAL = {"f32": 2.0 ** -126, "f16": 2.0 ** -14, "bf16": 2.0 ** -126}
BIAS_MIN_ELEMENTS = 256
BIAS_SIGMAS = 8.0


# -- metrics ------------------------------------------------------------------------------


def as_f64(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor from the reference side
        a = a.detach().to("cpu").double().numpy()
    return np.asarray(a, dtype=np.float64)


def error_metrics(actual: Any, expected: Any) -> dict[str, float]:
    """max abs, max rel, mean abs, NMSE, SQNR (dB), cosine similarity and the scale bias
    (slope - 1 of actual regressed on expected) with its standard error."""
    a, e = as_f64(actual), as_f64(expected)
    if a.size == 0:
        return {"max_abs": 0.0, "max_rel": 0.0, "mean_abs": 0.0, "nmse": 0.0,
                "sqnr_db": math.inf, "cosine": 1.0}
    d = a - e
    diff = np.abs(d)
    # Relative error is only meaningful away from zero; tiny reference values use atol.
    rel = diff / np.maximum(np.abs(e), np.finfo(np.float32).tiny)
    signal = float(np.sum(e * e))
    noise = float(np.sum(d * d))
    nmse = noise / signal if signal > 0 else (0.0 if noise == 0 else math.inf)
    na, ne = float(np.linalg.norm(a)), float(np.linalg.norm(e))
    cosine = float(np.dot(a.ravel(), e.ravel()) / (na * ne)) if na > 0 and ne > 0 else \
        (1.0 if na == ne else 0.0)
    m = {
        "max_abs": float(np.max(diff)),
        "max_rel": float(np.max(rel)),
        "mean_abs": float(np.mean(diff)),
        "nmse": nmse,
        "sqnr_db": (-10.0 * math.log10(nmse)) if nmse > 0 else math.inf,
        "cosine": cosine,
    }
    if signal > 0:
        m["scale_bias"] = float(np.sum(d * e) / signal)
        m["scale_bias_se"] = float(np.sqrt(np.sum((d * e) ** 2)) / signal)
    return m


def nmse(a: Any, b: Any) -> float:
    """Whole-tensor NMSE of `a` against `b`; inf when either is non-finite."""
    a, b = as_f64(a), as_f64(b)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.inf
    return error_metrics(a, b)["nmse"]


def token_nmse(a: np.ndarray | None, g: np.ndarray) -> float:
    """The model-level error statistic (captured tensors, logits): NMSE per token (each
    row of the last axis against its own norm), averaged over tokens. A whole-tensor NMSE
    is decided by its largest rows: where one token carries a massive activation
    (SmolLM2's token 0 reaches ~150 in some layers) the ratio of two implementations'
    errors becomes a one-token statistic that swings 10x either way from layer to layer;
    the mean over tokens does not. NaN when `a` is missing, inf when either side is
    non-finite or the shapes differ."""
    if a is None:
        return math.nan
    if a.shape != g.shape or not (np.isfinite(a).all() and np.isfinite(g).all()):
        return math.inf
    a2, g2 = a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])
    signal = np.sum(g2 * g2, axis=1)
    keep = signal > 0
    if not keep.any():
        return error_metrics(a, g)["nmse"]
    noise = np.sum((a2 - g2) ** 2, axis=1)
    return float(np.mean(noise[keep] / signal[keep]))



def softmax64(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def logits_metrics(ours: np.ndarray, golden: np.ndarray, k: int = 5) -> dict[str, float]:
    """Over all positions: top-1 agreement, mean top-k overlap, mean KL(golden || ours)."""
    o = ours.reshape(-1, ours.shape[-1])
    g = golden.reshape(-1, golden.shape[-1])
    if not (np.isfinite(o).all() and np.isfinite(g).all()):
        return {"top1_agreement": math.nan, f"top{k}_overlap": math.nan, "kl": math.inf}
    top1 = float(np.mean(o.argmax(-1) == g.argmax(-1)))
    ko = np.argsort(-o, axis=-1)[:, :k]
    kg = np.argsort(-g, axis=-1)[:, :k]
    overlap = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ko, kg)]))
    p, q = softmax64(g), softmax64(o)
    kl = float(np.mean(np.sum(p * (np.log(p + 1e-300) - np.log(q + 1e-300)), axis=-1)))
    return {"top1_agreement": top1, f"top{k}_overlap": overlap, "kl": max(kl, 0.0)}


def ulp_distance(actual: np.ndarray, expected: np.ndarray, dtype: str) -> np.ndarray:
    """|actual - expected| in units of the dtype's spacing at `expected`."""
    from infinilm_models.runtime import DType

    npd = DType.parse(dtype).numpy
    e = expected.astype(npd)
    spacing = np.abs(np.spacing(e.astype(np.float32) if dtype == "bf16" else e)
                     ).astype(np.float64)
    if dtype == "bf16":  # bfloat16 keeps 8 significant bits of a float32
        spacing = spacing * 2.0 ** 16
    return np.abs(actual - expected) / np.maximum(spacing, np.finfo(np.float64).tiny)


# -- tolerances ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    nmse: float | None = None
    bias: float | None = None  # floor of the scale-bias bound; None: the dtype's default
    source: str = ""

    def bound(self) -> Bound:
        return Bound("elementwise", self.source, atol=self.atol, rtol=self.rtol,
                     nmse=self.nmse)


@dataclass(frozen=True)
class Calibrated:
    """ours <= k x reference + floor (model level)."""

    k: float
    floor: float
    source: str = ""

    def threshold(self, reference_error: float) -> float:
        return self.k * reference_error + self.floor


class TolerancePolicy:
    """(check, dtype) -> Tolerance or Calibrated, from the data file and a user overlay."""

    def __init__(self, table: dict, sources: list[str]) -> None:
        self.table = table
        self.sources = sources

    @classmethod
    def load(cls, override: Path | None = None) -> TolerancePolicy:
        table = _read_toml(DEFAULT_TOLERANCES)
        sources = [str(DEFAULT_TOLERANCES)]
        if override is not None:
            overlay = _read_toml(override)
            _check_overlay(override, overlay, table)
            for check, per_dtype in overlay.items():
                table.setdefault(check, {}).update(per_dtype)
            sources.append(str(override))
        return cls(table, sources)

    def _entry(self, check: str, dtype: str) -> Mapping[str, Any]:
        entry = self.table.get(check, {}).get(dtype)
        if entry is None:
            raise KeyError(f"no tolerance for check {check!r} dtype {dtype!r} in "
                           f"{', '.join(self.sources)}")
        return entry

    def get(self, check: str, dtype: str) -> Tolerance:
        entry = self._entry(check, dtype)
        unknown = set(entry) - {"atol", "rtol", "nmse", "bias"}
        if unknown or not {"atol", "rtol"} <= set(entry):
            raise ValueError(f"tolerance [{check}.{dtype}] needs atol and rtol (optional "
                             f"nmse, bias); got {dict(entry)}")
        return Tolerance(float(entry["atol"]), float(entry["rtol"]),
                         float(entry["nmse"]) if "nmse" in entry else None,
                         float(entry["bias"]) if "bias" in entry else None,
                         f"{check}.{dtype}")

    def margin(self, check: str, dtype: str) -> float:
        """A near-tie margin ([generation_margin]: the top-2 logit gap below which two
        greedy paths may part)."""
        entry = self._entry(check, dtype)
        if set(entry) != {"margin"}:
            raise KeyError(f"tolerance [{check}.{dtype}] needs exactly margin in "
                           f"{', '.join(self.sources)}; got {dict(entry)}")
        return float(entry["margin"])

    def calibrated(self, check: str, dtype: str) -> Calibrated:
        entry = self._entry(check, dtype)
        if set(entry) != {"k", "floor"}:
            raise KeyError(f"tolerance [{check}.{dtype}] needs exactly k and floor in "
                           f"{', '.join(self.sources)}; got {dict(entry)}")
        return Calibrated(float(entry["k"]), float(entry["floor"]), f"{check}.{dtype}")


def _read_toml(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tolerance file {path}: not found")
    if not path.is_file():  # a directory, or a pipe that would block the read
        raise ValueError(f"tolerance file {path}: not a regular file")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ValueError(f"tolerance file {path}: cannot be read: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"tolerance file {path}: not valid TOML: {e}") from None


ELEMENTWISE_FIELDS = ("atol", "rtol", "nmse", "bias")
CALIBRATED_FIELDS = ("k", "floor")


def _check_overlay(path: Path, overlay: dict, shipped: dict) -> None:
    """An overlay may name only the checks and dtypes of the shipped table, each entry
    whole (it replaces the shipped one) in the shipped entry's kind, with finite numbers
    >= 0: a misspelled section or field would otherwise be ignored silently."""
    for check, per_dtype in overlay.items():
        if check not in shipped:
            raise ValueError(f"tolerance file {path}: [{check}]: no such check (known: "
                             f"{', '.join(shipped)})")
        if not isinstance(per_dtype, dict):
            raise ValueError(f"tolerance file {path}: {check}: expected a [{check}] table "
                             f"of dtypes, got {per_dtype!r}")
        for dtype, entry in per_dtype.items():
            key = f"[{check}] {dtype}"
            if dtype not in shipped[check]:
                raise ValueError(f"tolerance file {path}: {key}: no such dtype for this check "
                                 f"(known: {', '.join(shipped[check])})")
            if not isinstance(entry, dict):
                raise ValueError(f"tolerance file {path}: {key}: expected an inline table "
                                 f"such as {{ atol = 1e-3, rtol = 1e-3 }}, got {entry!r}")
            calibrated = set(shipped[check][dtype]) <= set(CALIBRATED_FIELDS)
            fields = CALIBRATED_FIELDS if calibrated else ELEMENTWISE_FIELDS
            needed = CALIBRATED_FIELDS if calibrated else ("atol", "rtol")
            for name, value in entry.items():
                if name not in fields:
                    raise ValueError(f"tolerance file {path}: {key}.{name}: no such field "
                                     f"(this bound has {', '.join(fields)})")
                if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                        not math.isfinite(value) or value < 0:
                    raise ValueError(f"tolerance file {path}: {key}.{name} = {value!r}: "
                                     "expected a finite number >= 0")
            missing = [f for f in needed if f not in entry]
            if missing:
                raise ValueError(f"tolerance file {path}: {key}: lacks {', '.join(missing)} "
                                 "(an entry replaces the shipped one whole)")


# -- judgements ---------------------------------------------------------------------------


def _nonfinite(a: np.ndarray, e: np.ndarray, what: str, bound: Bound) -> Comparison | None:
    for side, x in (("ours", a), ("reference", e)):
        bad = ~np.isfinite(x)
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0]) if x.ndim else ()
            value = x[idx] if x.ndim else x.item()
            return Comparison(what, False, f"{what}: non-finite value {value} in {side} at "
                                           f"index {idx} ({int(bad.sum())} of {x.size} "
                                           "elements)",
                              {"nonfinite": float(bad.sum()),
                               "nonfinite_in_ours": float(side == "ours")},
                              bound)
    return None


def bias_limit(metrics: Mapping[str, float], dtype: str | None, floor: float | None) -> float:
    if floor is None:
        u = UNIT_ROUNDOFF.get(dtype or "f32", UNIT_ROUNDOFF["f32"])
        floor = max(u / 4, 64 * UNIT_ROUNDOFF["f32"])
    return max(BIAS_SIGMAS * metrics.get("scale_bias_se", 0.0), floor)


def close(actual: Any, expected: Any, tol: Tolerance, what: str = "output", *,
          dtype: str | None = None, envelope: Mapping[str, Any] | None = None,
          defect: str | None = None) -> Comparison:
    """Elementwise tolerance, NMSE and (given a dtype and enough elements) scale bias.
    With a known defect's `envelope` (atol, rtol, nmse, bias), an out-of-bound result is
    judged again under the widened tolerance: inside it the comparison is explained by
    `defect`, outside it the failure stands."""
    a, e = as_f64(actual), as_f64(expected)
    c = _close(a, e, tol, what, dtype)
    if c.passed or not envelope or not c.metrics:
        return c
    if "nonfinite" in c.metrics:
        return _explained(c, bool(envelope.get("nonfinite", False)),
                          Bound("limit", defect or "envelope", metric="non-finite values"),
                          defect or "envelope")
    wide = Tolerance(max(tol.atol, float(envelope.get("atol", 0.0))),
                     max(tol.rtol, float(envelope.get("rtol", 0.0))),
                     max(tol.nmse, float(envelope.get("nmse", 0.0)))
                     if tol.nmse is not None else None,
                     envelope.get("bias", tol.bias), defect or "envelope")
    again = _close(a, e, wide, what, dtype)
    return _explained(c, again.passed, wide.bound(), defect or "envelope")


def _explained(c: Comparison, ok: bool, env: Bound, defect: str) -> Comparison:
    if ok:
        return replace(c, explained_by=defect, envelope=env,
                       reason=f"{c.reason} [inside the envelope of known defect {defect}: "
                              f"{env.describe()}]")
    return replace(c, envelope=env, reason=f"{c.reason} [also outside the envelope of known "
                                           f"defect {defect}: {env.describe()}]")


def _close(a: np.ndarray, e: np.ndarray, tol: Tolerance, what: str,
           dtype: str | None) -> Comparison:
    bound = tol.bound()
    if a.shape != e.shape:
        return Comparison(what, False, f"{what}: shape {a.shape} != expected {e.shape}", {},
                          bound)
    bad = _nonfinite(a, e, what, bound)
    if bad is not None:
        return bad
    m = error_metrics(a, e)
    excess = np.abs(a - e) - (tol.atol + tol.rtol * np.abs(e))
    if (excess > 0).any():
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(excess)), excess.shape))
        n = int((excess > 0).sum())
        return Comparison(what, False, f"{what}: {n} of {a.size} elements outside "
                                       f"{bound.describe()}; worst at {idx}: got {a[idx]:.6g}, "
                                       f"expected {e[idx]:.6g}", m, bound)
    if tol.nmse is not None and m["nmse"] > tol.nmse:
        return Comparison(what, False, f"{what}: NMSE {m['nmse']:.3g} > {tol.nmse:g}", m,
                          bound)
    if dtype is not None and a.size >= BIAS_MIN_ELEMENTS and "scale_bias" in m:
        limit = bias_limit(m, dtype, tol.bias)
        m["scale_bias_limit"] = limit
        if abs(m["scale_bias"]) > limit:
            sigmas = abs(m["scale_bias"]) / max(m["scale_bias_se"], 1e-300)
            return Comparison(what, False, f"{what}: systematic scale error: output = "
                                           f"{1 + m['scale_bias']:.6f} x reference (|bias| "
                                           f"{abs(m['scale_bias']):.3g} > {limit:.3g}, "
                                           f"{sigmas:.0f} standard errors)", m, bound)
    return Comparison(what, True, f"{what}: within {bound.describe()}", m, bound)


def spread(reference: float, alternative: float | None) -> float:
    """The spread of correct implementations in a half-precision dtype: the larger error
    against the golden of transformers' and of the second correct implementation the
    harness computes (model/faithful.py: every gemm rounded the other way). Without the
    alternative (f32), or where it is not finite, transformers' alone: never a looser
    bound than transformers' gives."""
    if alternative is None or not math.isfinite(alternative) or not math.isfinite(reference):
        return reference
    return max(reference, alternative)


def _basis(reference: float, alternative: float | None, metric: str) -> str:
    """What a calibrated bound's k multiplies, in words."""
    if alternative is None:
        return f"transformers' {reference:.3g}"
    return (f"the spread {spread(reference, alternative):.3g} of correct implementations "
            f"(transformers' {metric} {reference:.3g}, faithful-rounding alternative's "
            f"{alternative:.3g})")


def calibrated(ours: Any, reference: Any, golden: Any, cal: Calibrated, what: str,
               metric: str = "nmse", alternative: Any = None) -> Comparison:
    """ours-vs-golden against k x (reference-vs-golden) + floor, on one metric of
    error_metrics; with an `alternative` (a second correct computation in the same dtype),
    k x the spread of both (`spread`). Non-finite values on any side fail."""
    o, r, g = as_f64(ours), as_f64(reference), as_f64(golden)
    bound = Bound("calibrated", cal.source, k=cal.k, floor=cal.floor, metric=metric)
    sides = [("ours", o), ("golden", g), ("reference", r)]
    if alternative is not None:
        sides.append(("alternative", as_f64(alternative)))
    for side, x in sides:
        if x.shape != g.shape:
            return Comparison(what, False, f"{what}: {side} shape {x.shape} != golden "
                                           f"{g.shape}", {}, bound)
        if not np.isfinite(x).all():
            idx = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
            return Comparison(what, False, f"{what}: non-finite value {x[idx]} in {side} at "
                                           f"{idx}", {"nonfinite": 1.0}, bound)
    mine, theirs = error_metrics(o, g), error_metrics(r, g)
    alt = error_metrics(sides[3][1], g)[metric] if alternative is not None else None
    return calibrated_value(what, mine[metric], theirs[metric], cal, metric,
                            metrics={**mine, "reference_" + metric: theirs[metric]},
                            alternative=alt)


def calibrated_value(what: str, ours: float, reference: float, cal: Calibrated,
                     metric: str, metrics: dict[str, float] | None = None,
                     alternative: float | None = None) -> Comparison:
    """The calibrated bound on two already computed errors (KL, perplexity delta...):
    ours <= k x reference + floor, or with the `alternative`'s error, k x their `spread`.
    The metrics keep transformers' error as reference_<metric> (what a known defect's
    envelope multiplies), the alternative's as alternative_<metric>."""
    basis = spread(reference, alternative)
    limit = cal.threshold(basis)
    bound = Bound("calibrated", cal.source, k=cal.k, floor=cal.floor, reference=basis,
                  threshold=limit, metric=metric)
    m = dict(metrics or {})
    m.setdefault(metric, ours)
    m.setdefault("reference_" + metric, reference)
    if alternative is not None:
        m["alternative_" + metric] = alternative
    if not (math.isfinite(ours) and math.isfinite(reference)):
        return Comparison(what, False, f"{what}: {metric} is not finite (ours {ours}, "
                                       f"reference {reference})", m, bound)
    if ours > limit:
        return Comparison(what, False, f"{what}: {metric} {ours:.3g} > {limit:.3g} "
                                       f"({cal.k:g} x {_basis(reference, alternative, metric)}"
                                       f" + {cal.floor:g})", m, bound)
    return Comparison(what, True, f"{what}: {metric} {ours:.3g} <= {limit:.3g}", m, bound)


def exact(actual: Any, expected: Any, what: str = "output", *,
          standard: str = "integer output") -> Comparison:
    """Equality, only where a standard demands it (`standard` says which)."""
    a, e = np.asarray(actual), np.asarray(expected)
    bound = Bound("exact", standard)
    if a.shape != e.shape:
        return Comparison(what, False, f"{what}: shape {a.shape} != expected {e.shape}",
                          {"mismatches": float(e.size)}, bound)
    if a.dtype.kind == "f" or e.dtype.kind == "f":
        bad = _nonfinite(as_f64(a), as_f64(e), what, bound) if standard != "copy" else None
        if bad is not None:
            return bad
    diff = ~((a == e) | (_isnan(a) & _isnan(e)))  # a copy of a NaN is a correct copy
    m = {"mismatches": float(diff.sum()), "size": float(max(a.size, 1))}
    if not diff.any():
        return Comparison(what, True, f"{what}: equal ({standard})", m, bound)
    if a.ndim == 0:
        return Comparison(what, False, f"{what}: got {a.item()}, expected {e.item()}", m,
                          bound)
    idx = tuple(int(i) for i in np.argwhere(diff)[0])
    return Comparison(what, False, f"{what}: {int(diff.sum())} of {a.size} elements differ; "
                                   f"first at {idx}: got {a[idx]}, expected {e[idx]}", m,
                      bound)


def _isnan(x: np.ndarray) -> np.ndarray:
    return np.isnan(x) if x.dtype.kind == "f" else np.zeros(x.shape, dtype=bool)


def argmax_pick(token: int, logits: Any, what: str = "token id") -> Comparison:
    """An argmax result: right when it is any index holding the maximum (ties allowed)."""
    x = as_f64(logits).ravel()
    bound = Bound("exact", "argmax (any maximal index)")
    if not np.isfinite(x).all():
        return Comparison(what, False, f"{what}: non-finite logits", {"nonfinite": 1.0}, bound)
    maxima = np.flatnonzero(x == x.max())
    ok = 0 <= token < x.size and token in set(maxima.tolist())
    m = {"ties": float(maxima.size)}
    if ok:
        return Comparison(what, True, f"{what}: {token} is a maximal index", m, bound)
    return Comparison(what, False, f"{what}: got {token}, the maximum is at "
                                   f"{maxima[:8].tolist()}", m, bound)


def correctly_rounded(actual: Any, exact_value: Any, dtype: str,
                      what: str = "correctly rounded") -> Comparison:
    """IEEE 754 round-to-nearest-even of an exactly known result: a property."""
    from infinilm_models.runtime import DType

    a, x = as_f64(actual), as_f64(exact_value)
    npd = DType.parse(dtype).numpy
    want = x.astype(np.float32).astype(npd).astype(np.float64) if dtype != "f32" else \
        x.astype(np.float32).astype(np.float64)
    bound = Bound("exact", "IEEE 754 round to nearest even", max_ulp=0)
    bad = _nonfinite(a, want, what, bound)
    if bad is not None:
        bad.kind = "property"
        return bad
    wrong = a != want
    ulps = ulp_distance(a, want, dtype)
    direction = np.sign(a - want)[wrong]
    m = {"mismatches": float(wrong.sum()), "fraction": float(wrong.mean()),
         "max_ulp": float(ulps.max()) if ulps.size else 0.0,
         "below": float((direction < 0).sum()), "above": float((direction > 0).sum())}
    if not wrong.any():
        return Comparison(what, True, f"{what}: every result correctly rounded", m, bound,
                          kind="property")
    toward_zero = float(((a - want) * np.sign(want) < 0)[wrong].mean())
    m["toward_zero"] = toward_zero
    idx = tuple(int(i) for i in np.argwhere(wrong)[0])
    return Comparison(
        what, False, f"{what}: not correctly rounded: {int(wrong.sum())} of {a.size} results "
                     f"differ from round-to-nearest-even by up to {m['max_ulp']:.3g} ulp "
                     f"({m['below']:.0f} below, {m['above']:.0f} above; "
                     f"{toward_zero:.0%} toward zero); e.g. at {idx}: {a[idx]!r} where "
                     f"{want[idx]!r} is correctly rounded", m, bound, kind="property")


def masked_positions(probs: Any, masked: np.ndarray, dtype: str,
                     what: str = "masked positions") -> list[Comparison]:
    """Masked (future) attention positions: real probability mass there fails (a wrong
    mask); a subnormal instead of an exact 0 is only a finding (no standard demands 0)."""
    p = as_f64(probs)[masked]
    limit = SMALLEST_NORMAL[dtype]
    bound = Bound("limit", f"smallest normal of {dtype}", threshold=limit,
                  metric="max |p| at masked positions")
    worst = float(np.max(np.abs(p))) if p.size else 0.0
    m = {"max_abs": worst, "nonzero": float(np.count_nonzero(p))}
    if not np.isfinite(p).all():
        acc = Comparison(what, False, f"{what}: non-finite probability", m, bound)
    elif worst >= limit:
        acc = Comparison(what, False, f"{what}: {int((np.abs(p) >= limit).sum())} masked "
                                      f"positions carry probability mass (max {worst:.3g} >= "
                                      f"{limit:.3g})", m, bound)
    else:
        acc = Comparison(what, True, f"{what}: no probability mass", m, bound)
    zero = Comparison(f"{what} exactly 0", worst == 0.0,
                      f"{what}: {m['nonzero']:.0f} masked positions hold a subnormal "
                      f"(max {worst:.3g}) instead of 0" if worst else f"{what}: exactly 0",
                      m, Bound("exact", "finding: exact zeros"), kind="finding")
    return [acc, zero]


def finding(what: str, ok: bool, reason: str,
            metrics: dict[str, float] | None = None) -> Comparison:
    """A property no standard mandates: reported, never failing."""
    return Comparison(what, ok, reason, dict(metrics or {}), Bound("exact", "finding"),
                      kind="finding")


def finite(what: str, array: Any) -> Comparison:
    """Values a check goes on to use (logits that tokens are picked from) must be finite."""
    x = as_f64(array)
    bad = ~np.isfinite(x)
    bound = Bound("exact", "finite values")
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        return Comparison(what, False, f"{what}: {int(bad.sum())} of {x.size} values are "
                                       f"non-finite, first {x[idx]} at {idx}",
                          {"nonfinite": float(bad.sum())}, bound)
    return Comparison(what, True, f"{what}: all finite", {"nonfinite": 0.0}, bound)


def greedy_tokens(ours: Any, reference: Any, reference_logits: Any, margin: float,
                  what: str, sides: tuple[str, str] = ("ours", "golden"),
                  prompt_tokens: int | None = None,
                  spread: Any = None) -> tuple[Comparison, Generation]:
    """Two sides' greedy tokens, [rows, steps] (or [steps] for one row), against each
    other: equal, or the first divergence at a near tie of the reference side's top-2
    logits there (margin < `margin`; 0 demands equality), as vLLM's
    check_logprobs_close. `reference_logits`: the reference side's logits at each step,
    [rows, steps, vocab] (or [steps, vocab]). The first divergence is the first step
    where any row differs, or where one side is shorter; past the last step with logits
    no near tie can be claimed. `sides` names both, in every message.

    `spread` ([rows, steps] or [rows]): how far a correct implementation's logits are from
    the reference side's there (max |transformers in the dtype - golden| of the row and
    step). Two such implementations may swap two tokens whose reference gap is below twice
    that, so the near tie there is max(margin, 2 x spread): what the dtype costs at that
    position (long contexts drift further than the fixed margin), and transformers' own
    run always passes it."""
    o, r = _token_rows(ours), _token_rows(reference)
    logits = as_f64(reference_logits)
    if logits.ndim == 2:
        logits = logits[None]
    mine, theirs = sides
    bound = Bound("limit", "generation_margin", threshold=margin,
                  metric=f"{theirs}'s top-2 logit margin at the first divergence")
    gen = Generation(what=what, ours=mine, reference=theirs, ours_tokens=o.tolist(),
                     reference_tokens=r.tolist(), passed=True, allowed_margin=margin,
                     prompt_tokens=prompt_tokens)
    if o.shape[0] != r.shape[0]:
        gen.passed = False
        return Comparison(what, False, f"{what}: {mine} has {o.shape[0]} rows, {theirs} "
                                       f"{r.shape[0]}", {}, bound), gen
    n = min(o.shape[1], r.shape[1])
    differ = np.argwhere(o[:, :n] != r[:, :n])
    if len(differ):
        step = int(differ[:, 1].min())
        row = int(differ[differ[:, 1] == step][0, 0])
    elif o.shape[1] != r.shape[1]:
        step, row = n, 0
    else:
        return Comparison(what, True, f"{what}: {mine} and {theirs} identical "
                                      f"({o.shape[0]} x {n} tokens)",
                          {"first_divergence": -1.0}, bound), gen
    gen.first_divergence, gen.row = step, row
    got = int(o[row, step]) if step < o.shape[1] else None
    want = int(r[row, step]) if step < r.shape[1] else None
    at = f"step {step}, row {row} ({mine} {got}, {theirs} {want})"
    m = {"first_divergence": float(step), "row": float(row)}
    if row >= logits.shape[0] or step >= logits.shape[1] or got is None or want is None:
        gen.passed = False
        return Comparison(what, False, f"{what}: diverges at {at} where {theirs}'s logits "
                                       "are not known: no near tie can be claimed", m,
                          bound), gen
    top2 = np.sort(logits[row, step])[-2:]
    gap = float(top2[1] - top2[0])
    gen.margin = m["reference_top2_margin"] = gap
    if spread is not None:
        s = np.atleast_2d(as_f64(spread))
        if row < s.shape[0] and step < s.shape[1]:
            m["spread"] = float(s[row, step])
            margin = max(margin, 2.0 * m["spread"])
            gen.allowed_margin = margin
            bound = replace(bound, threshold=margin)
    if gap < margin:
        return Comparison(what, True, f"{what}: diverges at {at} at a near tie ({theirs}'s "
                                      f"top-2 margin {gap:.3g} < {margin:g})", m, bound), gen
    gen.passed = False
    return Comparison(what, False, f"{what}: diverges at {at}; {theirs}'s top-2 margin "
                                   f"{gap:.3g} >= {margin:g} (not a near tie)", m, bound), gen


def _token_rows(tokens: Any) -> np.ndarray:
    t = np.asarray(tokens)
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2:
        raise ValueError(f"greedy tokens must be [steps] or [rows, steps], got shape {t.shape}")
    return t.astype(np.int64)


# -- known-defect envelopes ---------------------------------------------------------------


def with_envelope(c: Comparison, envelope: Mapping[str, Any], defect: str) -> Comparison:
    """Re-judge an out-of-bound calibrated, property or limit comparison under a known
    defect's envelope (elementwise ones are re-judged inside `close`, which still has the
    arrays): the bound widened by exactly the deviation the defect explains."""
    if c.passed or c.bound is None or c.explained_by or c.kind == "finding":
        return c
    b, m = c.bound, c.metrics
    if "nonfinite" in m:
        return _explained(c, bool(envelope.get("nonfinite", False)),
                          Bound("limit", defect, metric="non-finite values"), defect)
    if b.kind == "calibrated":
        # per metric ("k.rel_delta", "floor.nmse") where one defect moves metrics of
        # different scales by different factors
        k = max(b.k or 0.0, float(envelope.get(f"k.{b.metric}", envelope.get("k", 0.0))))
        # a floor per metric ("floor.rel_delta") where one defect moves metrics of
        # different scales
        floor = max(b.floor or 0.0, float(envelope.get(f"floor.{b.metric}",
                                                       envelope.get("floor", 0.0))))
        ref = m.get("reference_" + (b.metric or "nmse"), b.reference or 0.0)
        env = replace(b, source=defect, k=k, floor=floor, reference=ref,
                      threshold=k * ref + floor)
        return _explained(c, m.get(b.metric or "nmse", math.inf) <= env.threshold, env, defect)
    if c.kind == "property" and "max_ulp" in m:
        env = replace(b, source=defect, max_ulp=int(envelope.get("max_ulp", 0)))
        direction = envelope.get("direction")
        ok = m["max_ulp"] <= env.max_ulp
        if direction == "toward_zero":
            ok = ok and m.get("toward_zero", 0.0) >= 0.99
        elif direction == "down":
            ok = ok and m.get("above", 1.0) == 0.0
        return _explained(c, ok, env, defect)
    if b.kind == "exact" and "mismatches" in envelope and "size" in m:
        env = replace(b, source=defect, threshold=float(envelope["mismatches"]),
                      metric="fraction of elements that may differ")
        return _explained(c, m["mismatches"] / m["size"] <= env.threshold, env, defect)
    if b.kind == "limit" and "threshold" in envelope:
        env = replace(b, source=defect, threshold=float(envelope["threshold"]))
        return _explained(c, m.get("max_abs", math.inf) <= env.threshold, env, defect)
    return c


def calibrated_series(what: str, labels: list[str], ours: list[float], reference: list[float],
                      cal: Calibrated, metric: str = "nmse",
                      alternative: list[float] | None = None) -> tuple[Comparison, list[bool]]:
    """One calibrated bound applied to a series (every captured tensor of a run): passes
    when each ours[i] <= k x reference[i] + floor (with `alternative`, k x the `spread` of
    reference[i] and alternative[i]); a non-finite value breaches. Returns the comparison
    (reason naming the first breach, metrics of the worst one) and the per-entry
    verdicts."""
    alts = alternative if alternative is not None else [None] * len(reference)
    basis = [spread(r, a) for r, a in zip(reference, alts)]
    limits = [cal.threshold(b) if math.isfinite(b) else math.nan for b in basis]
    ok = [math.isfinite(o) and math.isfinite(lim) and o <= lim
          for o, lim in zip(ours, limits)]
    ratios = [o / lim if (math.isfinite(o) and math.isfinite(lim) and lim > 0) else math.inf
              for o, lim in zip(ours, limits)]
    bound = Bound("calibrated", cal.source, k=cal.k, floor=cal.floor, metric=metric)
    if not labels:
        return Comparison(what, True, f"{what}: nothing compared", {}, bound), ok
    worst = max(range(len(labels)), key=lambda i: ratios[i])
    m = {metric: ours[worst], f"reference_{metric}": reference[worst],
         "threshold": limits[worst], "worst_ratio": ratios[worst],
         "breaches": float(ok.count(False)), "compared": float(len(ok))}
    if alternative is not None:
        m[f"alternative_{metric}"] = alts[worst]
    bound = replace(bound, reference=basis[worst], threshold=limits[worst])
    what_k = "transformers'" if alternative is None else "the spread of correct implementations'"
    if all(ok):
        return Comparison(what, True, f"{what}: all {len(ok)} within {cal.k:g} x {what_k} "
                                      f"{metric} + {cal.floor:g} (worst {labels[worst]}: "
                                      f"{ratios[worst]:.2g} of its bound)", m, bound), ok
    first = ok.index(False)
    return Comparison(what, False, f"{what}: {ok.count(False)} of {len(ok)} out of bound; first "
                                   f"{labels[first]}: {metric} {ours[first]:.3g} > "
                                   f"{limits[first]:.3g} ({cal.k:g} x "
                                   f"{_basis(reference[first], alts[first], metric)} + "
                                   f"{cal.floor:g})", m, bound), ok
