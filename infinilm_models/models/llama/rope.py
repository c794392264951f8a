"""Rotary embedding: inverse frequencies of every RoPE type transformers implements for
LLaMA, and the sin/cos tables on the device.

    default    theta^(-2i/d)
    linear     default / factor
    dynamic    (NTK) default with theta grown once a forward's positions pass
               max_position_embeddings: theta * (factor * L / max_pos - (factor - 1))^(d/(d-2))
    yarn       default and default / factor blended by a ramp over the frequency bands;
               cos/sin scaled by the attention factor (0.1 ln(factor) + 1 by default)
    longrope   default / short_factor[i], or / long_factor[i] for a forward whose positions
               pass original_max_position_embeddings; cos/sin scaled by the attention factor
    llama3     default with long wavelengths / factor, short kept, a smooth blend between

transformers computes these in float32 (torch), operation by operation. `inv_freq` does the
same: each operation in float64 on float32 inputs, rounded to float32 where torch rounds.
For + - * / that is exactly torch's result (float64 holds more than twice float32's
precision), for pow and log the correctly rounded one; an inverse frequency one float32 ulp
away would move the angle of position 1000 by ~1e-4 rad, more than the f32 model checks'
budget.

Dynamic and longrope choose their frequencies per forward from the largest position it
uses (`LlamaRotaryEmbedding.update`), with transformers' state machine: dynamic keeps the
frequencies of the longest forward so far (`max_seq_len_cached`) until a forward shorter
than max_position_embeddings resets them; longrope switches between its two sets per
forward. Keys already in a KV cache keep the rotation they were cached with, as in
transformers.

The tables: InfiniCore's rope op indexes them with per-token position ids (any order, any
batch layout), so they hold a row for every position a forward uses, but no more: they are
built for the positions a KV cache of the model can hold (``max_cache_len``) and grow on
demand when a forward is given explicit position ids beyond them, up to the model's position
limit. Building every ``max_position_embeddings`` row up front cost 2.2 GB and 10 s for a
config with 2^24 positions, and could not be done at all for 2^31 - 1 (transformers
computes the angles per forward and loads such a config).

Growing or switching frequencies replaces ``sin``/``cos`` by new tensors: read them at call
time (the attention does), never keep a reference across forwards.
"""

from __future__ import annotations

import math

import numpy as np

from ...runtime import Device, DType, Tensor

_F32 = np.float32


def _r(x) -> np.ndarray:
    """Round to float32 (torch's float32 result of one operation)."""
    return np.asarray(x, dtype=np.float64).astype(_F32)


def _w(x) -> np.ndarray:
    return np.asarray(x, dtype=_F32).astype(np.float64)


def _default(theta: float, dim: int) -> np.ndarray:
    """1.0 / (theta ** (arange(0, dim, 2).float() / dim)), in torch's float32 steps."""
    exponent = _r(np.arange(0, dim, 2, dtype=np.float64) / dim)
    return _r(1.0 / _w(_r(_w(_r(theta)) ** _w(exponent))))


def inv_freq(config, seq_len: int | None = None) -> np.ndarray:
    """float32 [head_dim // 2]: what transformers' rope init function of the config's type
    returns (`seq_len`: the length a dynamic/longrope forward reaches; None at load)."""
    dim, theta = config.head_dim, config.rope_theta
    rope = config.rope_scaling
    kind = rope["rope_type"] if rope else "default"
    if kind == "default":
        return _default(theta, dim)
    if kind == "linear":
        return _r(_w(_default(theta, dim)) / _w(_r(rope["factor"])))
    if kind == "dynamic":
        return _dynamic(config, seq_len)
    if kind == "yarn":
        return _yarn(config)
    if kind == "longrope":
        original = rope["original_max_position_embeddings"]
        factors = rope["long_factor"] if seq_len and seq_len > original else rope["short_factor"]
        exponent = _r(np.arange(0, dim, 2, dtype=np.float64) / dim)
        powers = _r(_w(_r(theta)) ** _w(exponent))
        return _r(1.0 / _w(_r(_w(_r(factors)) * _w(powers))))
    return _llama3(config)


def _dynamic(config, seq_len: int | None) -> np.ndarray:
    dim, theta, factor = config.head_dim, config.rope_theta, config.rope_scaling["factor"]
    max_pos = config.max_position_embeddings
    if seq_len is None:
        # At load transformers computes this in Python floats: theta * 1.0 ** x = theta.
        return _default(theta * ((factor * max_pos / max_pos) - (factor - 1)) **
                        (dim / (dim - 2)), dim)
    # Past it, with a float32 tensor seq_len: every step in float32.
    length = _w(_r(max(seq_len, max_pos)))
    scaled = _w(_r(_w(_r(_w(_r(factor)) * length)) / max_pos))
    term = _w(_r(scaled - _w(_r(factor - 1))))
    # the exponent stays a Python float (torch computes the pow with it in double)
    base = _r(_w(_r(theta)) * _w(_r(term ** (dim / (dim - 2)))))
    exponent = _r(np.arange(0, dim, 2, dtype=np.float64) / dim)
    return _r(1.0 / _w(_r(_w(base) ** _w(exponent))))


def _yarn(config) -> np.ndarray:
    rope, dim, base = config.rope_scaling, config.head_dim, config.rope_theta
    factor = rope["factor"]
    original = rope["original_max_position_embeddings"]
    beta_fast = rope.get("beta_fast") or 32
    beta_slow = rope.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # transformers: prevent a singularity
    exponent = _r(np.arange(0, dim, 2, dtype=np.float64) / dim)
    pos_freqs = _w(_r(_w(_r(base)) ** _w(exponent)))
    extrapolation = _w(_r(1.0 / pos_freqs))
    interpolation = _w(_r(1.0 / _w(_r(_w(_r(factor)) * pos_freqs))))
    ramp = _w(_r(_w(_r(np.arange(dim // 2, dtype=np.float64) - _w(_r(low))))
                 / _w(_r(high - low))))
    extrap_factor = _w(_r(1.0 - np.clip(ramp, 0.0, 1.0)))
    return _r(_w(_r(interpolation * _w(_r(1.0 - extrap_factor))))
              + _w(_r(extrapolation * extrap_factor)))


def _llama3(config) -> np.ndarray:
    rope = config.rope_scaling
    inv = _w(_default(config.rope_theta, config.head_dim))
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = _w(_r(_w(_r(2 * math.pi)) / inv))
    divided = _w(_r(inv / _w(_r(factor))))
    llama = np.where(wavelen > low_wavelen, divided, inv)
    smooth = _w(_r(_w(_r(_w(_r(_w(_r(old)) / wavelen)) - _w(_r(low)))) / _w(_r(high - low))))
    smoothed = _w(_r(_w(_r(_w(_r(_w(_r(1.0 - smooth)) * llama)) / _w(_r(factor))))
                     + _w(_r(smooth * llama))))
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return _r(np.where(medium, smoothed, llama))


def attention_factor(config) -> float:
    """transformers' `attention_scaling` (the factor on cos/sin) of the config's type."""
    rope = config.rope_scaling
    kind = rope["rope_type"] if rope else "default"
    if kind == "yarn":
        if rope.get("attention_factor") is not None:
            return rope["attention_factor"]
        factor, mscale, mscale_all = rope["factor"], rope.get("mscale"), rope.get("mscale_all_dim")
        if mscale and mscale_all:
            return float(_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all))
        return _yarn_mscale(factor)
    if kind == "longrope":
        if rope.get("attention_factor") is not None:
            return rope["attention_factor"]
        original = rope["original_max_position_embeddings"]
        factor = rope.get("factor")
        if factor is None:
            factor = config.max_position_embeddings / original
        return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return 1.0


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


class LlamaRotaryEmbedding:
    def __init__(self, config, device: Device, dtype: DType, initial_positions: int,
                 max_positions: int | None = None) -> None:
        """``initial_positions``: rows to build now (the model passes its max_cache_len);
        required, so that no caller builds max_position_embeddings rows by default.
        ``max_positions``: the positions accepted (default: the config's limit)."""
        self.device = device
        self.dtype = dtype
        self.config = config
        self.kind = config.rope_type
        self.scale = attention_factor(config)
        self.original_inv_freq = inv_freq(config)  # float32 [head_dim / 2]
        self.inv_freq = self.original_inv_freq
        self._long: np.ndarray | None = None  # longrope's long set, made on first use
        # dynamic: the longest forward whose frequencies are in use (transformers' name)
        self.original_max_seq_len = config.max_position_embeddings
        self.max_seq_len_cached = config.max_position_embeddings
        # The positions the model accepts at all; the tables hold `rows` <= this of them.
        self.max_positions = max_positions or config.position_limit or \
            config.max_position_embeddings
        self.rows = 0
        self.sin: Tensor
        self.cos: Tensor
        self._build(max(1, min(initial_positions, self.max_positions)))

    def ensure(self, positions: int) -> None:
        """Make the tables right for a forward whose positions are < `positions`: its
        frequencies (dynamic, longrope) and rows for positions [0, positions); grows at
        least 2x so that a run of growing position ids reallocates O(log n) times."""
        if positions > self.max_positions:
            raise ValueError(f"position {positions - 1} is beyond the model's "
                             f"{self.max_positions} positions")
        freq = self._frequencies(positions)
        if freq is not self.inv_freq:
            self.inv_freq = freq
            self._build(max(self.rows, min(self.max_positions, positions)))
        elif positions > self.rows:
            self._build(min(self.max_positions, max(positions, 2 * self.rows)))

    def reset(self) -> None:
        """Back to the frequencies at load (transformers' state after from_pretrained)."""
        self.max_seq_len_cached = self.original_max_seq_len
        if self.inv_freq is not self.original_inv_freq:
            self.inv_freq = self.original_inv_freq
            self._build(self.rows)

    def _frequencies(self, seq_len: int) -> np.ndarray:
        """transformers' dynamic_rope_update for a forward reaching `seq_len`."""
        if self.kind == "dynamic":
            if seq_len > self.max_seq_len_cached:  # growth
                self.max_seq_len_cached = seq_len
                return inv_freq(self.config, seq_len)
            if seq_len < self.original_max_seq_len < self.max_seq_len_cached:  # reset
                self.max_seq_len_cached = self.original_max_seq_len
                return self.original_inv_freq
            return self.inv_freq
        if self.kind == "longrope":
            original = self.config.rope_scaling["original_max_position_embeddings"]
            if seq_len > original:
                if self._long is None:
                    self._long = inv_freq(self.config, original + 1)
                return self._long
            return self.original_inv_freq
        return self.inv_freq

    def _build(self, rows: int) -> None:
        # transformers builds the angles in float32 (position x inverse frequency), scales
        # cos/sin by the attention factor and casts them to the activation dtype; doing the
        # same keeps the half-precision tables bit-comparable.
        positions = np.arange(rows, dtype=_F32)
        angles = np.outer(positions, self.inv_freq.astype(_F32))
        self.sin = Tensor.from_numpy((np.sin(angles) * self.scale).astype(_F32), self.device,
                                     self.dtype)
        self.cos = Tensor.from_numpy((np.cos(angles) * self.scale).astype(_F32), self.device,
                                     self.dtype)
        self.rows = rows
