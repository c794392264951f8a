"""Error metrics and the tolerance policy: the one place that decides pass or fail.

Every comparison computes the same metrics (recorded for the report whatever the
verdict) and is judged against a tolerance looked up by (check, dtype) in
`tolerances.toml`, or in the user's file given with `--tolerances`.

Verdict for a comparison of `actual` against the float64 `expected`:
  * any NaN/Inf in `actual` that is not in `expected` fails, naming the first index;
  * every element must satisfy |actual - expected| <= atol + rtol * |expected|;
  * NMSE = sum((actual - expected)^2) / sum(expected^2) must be <= nmse (when set).
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_TOLERANCES = Path(__file__).with_name("tolerances.toml")


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    nmse: float | None = None
    source: str = ""

    def describe(self) -> str:
        s = f"atol={self.atol:g} rtol={self.rtol:g}"
        return s + (f" nmse<={self.nmse:g}" if self.nmse is not None else "")


@dataclass
class Comparison:
    passed: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    tolerance: Tolerance | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tolerance"] = asdict(self.tolerance) if self.tolerance else None
        return d


def _as_f64(a) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor from the reference side
        a = a.detach().to("cpu").double().numpy()
    return np.asarray(a, dtype=np.float64)


def error_metrics(actual, expected) -> dict[str, float]:
    """max abs, max rel, mean abs, NMSE, SQNR (dB) and cosine similarity."""
    a, e = _as_f64(actual), _as_f64(expected)
    if a.size == 0:
        return {"max_abs": 0.0, "max_rel": 0.0, "mean_abs": 0.0, "nmse": 0.0,
                "sqnr_db": math.inf, "cosine": 1.0}
    diff = np.abs(a - e)
    denom = np.abs(e)
    # Relative error is only meaningful away from zero; tiny reference values use atol.
    rel = diff / np.maximum(denom, np.finfo(np.float32).tiny)
    signal = float(np.sum(e * e))
    noise = float(np.sum((a - e) ** 2))
    nmse = noise / signal if signal > 0 else (0.0 if noise == 0 else math.inf)
    na, ne = float(np.linalg.norm(a)), float(np.linalg.norm(e))
    cosine = float(np.dot(a.ravel(), e.ravel()) / (na * ne)) if na > 0 and ne > 0 else \
        (1.0 if na == ne else 0.0)
    return {
        "max_abs": float(np.max(diff)),
        "max_rel": float(np.max(rel)),
        "mean_abs": float(np.mean(diff)),
        "nmse": nmse,
        "sqnr_db": (-10.0 * math.log10(nmse)) if nmse > 0 else math.inf,
        "cosine": cosine,
    }


def compare(actual, expected, tol: Tolerance, what: str = "output") -> Comparison:
    a, e = _as_f64(actual), _as_f64(expected)
    if a.shape != e.shape:
        return Comparison(False, f"{what}: shape {a.shape} != expected {e.shape}", {}, tol)
    bad = ~np.isfinite(a) & np.isfinite(e)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        return Comparison(False, f"{what}: non-finite value {a[idx]} at index {idx} "
                                 f"({int(bad.sum())} of {a.size} elements)",
                          {"nonfinite": float(bad.sum())}, tol)
    m = error_metrics(a, e)
    excess = np.abs(a - e) - (tol.atol + tol.rtol * np.abs(e))
    if (excess > 0).any():
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(excess)), excess.shape))
        n = int((excess > 0).sum())
        return Comparison(False, f"{what}: {n} of {a.size} elements outside {tol.describe()}; "
                                 f"worst at {idx}: got {a[idx]:.6g}, expected {e[idx]:.6g}", m, tol)
    if tol.nmse is not None and m["nmse"] > tol.nmse:
        return Comparison(False, f"{what}: NMSE {m['nmse']:.3g} > {tol.nmse:g}", m, tol)
    return Comparison(True, f"{what}: within {tol.describe()}", m, tol)


def compare_exact(actual, expected, what: str = "output") -> Comparison:
    """Integer results (token ids): equal or not."""
    a, e = np.asarray(actual), np.asarray(expected)
    exact = Tolerance(0.0, 0.0, None, "exact")
    if a.shape != e.shape:
        return Comparison(False, f"{what}: shape {a.shape} != expected {e.shape}",
                          {"mismatches": float(e.size)}, exact)
    diff = a != e
    m = {"mismatches": float(diff.sum())}
    if not diff.any():
        return Comparison(True, f"{what}: equal", m, exact)
    if a.ndim == 0:
        return Comparison(False, f"{what}: got {a.item()}, expected {e.item()}", m, exact)
    idx = tuple(int(i) for i in np.argwhere(diff)[0])
    return Comparison(False, f"{what}: {int(diff.sum())} of {a.size} elements differ; first at "
                             f"{idx}: got {a[idx]}, expected {e[idx]}", m, exact)


@dataclass(frozen=True)
class Calibrated:
    """Model-level bound earned from the reference's own error: a metric of ours against
    the golden may be at most k x (the same metric of transformers in the tested dtype
    against the golden) + floor."""

    k: float
    floor: float
    source: str = ""

    def threshold(self, reference_error: float) -> float:
        return self.k * reference_error + self.floor


class TolerancePolicy:
    """(check, dtype) -> Tolerance from the default data file, overlaid by a user file."""

    def __init__(self, table: dict, sources: list[str]) -> None:
        self.table = table
        self.sources = sources

    @classmethod
    def load(cls, override: Path | None = None) -> TolerancePolicy:
        table = _read_toml(DEFAULT_TOLERANCES)
        sources = [str(DEFAULT_TOLERANCES)]
        if override is not None:
            for check, per_dtype in _read_toml(override).items():
                table.setdefault(check, {}).update(per_dtype)
            sources.append(str(override))
        return cls(table, sources)

    def get(self, check: str, dtype: str) -> Tolerance:
        entry = self.table.get(check, {}).get(dtype)
        if entry is None:
            raise KeyError(
                f"no tolerance for check {check!r} dtype {dtype!r} in {', '.join(self.sources)}")
        unknown = set(entry) - {"atol", "rtol", "nmse"}
        if unknown:
            raise ValueError(f"tolerance [{check}.{dtype}] has unknown keys {sorted(unknown)}")
        return Tolerance(float(entry["atol"]), float(entry["rtol"]),
                         float(entry["nmse"]) if "nmse" in entry else None,
                         f"{check}.{dtype}")


def get_calibrated(policy: TolerancePolicy, check: str, dtype: str) -> Calibrated:
    entry = policy.table.get(check, {}).get(dtype)
    if entry is None or set(entry) != {"k", "floor"}:
        raise KeyError(f"tolerance [{check}.{dtype}] needs exactly k and floor in "
                       f"{', '.join(policy.sources)}; got {entry}")
    return Calibrated(float(entry["k"]), float(entry["floor"]), f"{check}.{dtype}")


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"tolerance file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"tolerance file {path} is not valid TOML: {e}") from None
