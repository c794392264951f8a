"""LlamaModel and LlamaForCausalLM on InfiniCore.

    model = LlamaForCausalLM.from_pretrained("path/to/hf-llama", device="cpu", dtype="bf16")
    logits = model.forward(input_ids)              # [batch, 1, vocab], last token
    logits = model.forward(ids, all_logits=True)   # [batch, seq, vocab]

Weights keep their HF names (`model.layers.3.self_attn.q_proj.weight`) from file to
module attribute, so a reader can map one to the other.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ...arguments import check_bool, check_int, token_ids
from ...generation import GenerationConfig
from ...runtime import Device, DType, Tensor, ops
from .attention import QKV_BIAS, QKV_WEIGHT, CachedStep
from .buffers import BufferPool, Buffers
from .configuration import LlamaConfig
from .decoder_layer import Capture, LlamaDecoderLayer
from .fusion import Fused, plan
from .kv_cache import CacheOverflowError, KVCache
from .loading import EMBED_WEIGHT, LM_HEAD_WEIGHT, load_state_dict
from .mlp import GATE_UP_BIAS, GATE_UP_WEIGHT
from .rope import LlamaRotaryEmbedding

DEFAULT_MAX_CACHE_LEN = 2048
_COMPUTE_DTYPES = (DType.F32, DType.F16, DType.BF16)


class LlamaModel:
    """embed_tokens -> N x LlamaDecoderLayer -> (the final norm lives in the head class,
    which applies it only to the positions whose logits are wanted)."""

    def __init__(self, config: LlamaConfig, weights: dict[str, Tensor],
                 first_layer: int = 0, fused: Fused | None = None) -> None:
        """`first_layer`: the global index of this model's layer 0 (a pipeline stage holds
        a range of layers; a stage without the embedding or the final norm has none).
        `fused`: the fused ops to run (fusion.py)."""
        self.config = config
        self.fused = fused or Fused()
        self.embed_tokens = weights.get("model.embed_tokens.weight")
        self.layers = []
        for i in range(config.num_hidden_layers):
            prefix = f"model.layers.{first_layer + i}."
            self.layers.append(LlamaDecoderLayer(
                config, i, {k.removeprefix(prefix): v for k, v in weights.items()
                            if k.startswith(prefix)}, name_index=first_layer + i,
                fused=self.fused))
        self.norm = weights.get("model.norm.weight")
        self._host_table: np.ndarray | None = None  # embed_tokens read back on first use

    def embed(self, input_ids: np.ndarray, out: Tensor, ids: Tensor | None = None) -> None:
        """The rows of `input_ids` into `out`: with the embedding op (fusion.py), the ids
        uploaded to `ids` (a device buffer of as many int64 elements) and gathered on the
        device; else a row gather on the host and one host-to-device copy of all rows.

        InfiniCore 0.1.0 has no embedding op. One device-to-device copy per token cost a
        synchronous memcpy each (the op benchmark measured 11.6 ms for 1024 tokens on an
        H100, where a whole 512-token forward took 23 ms); a host copy of the table (read
        back once, byte-exact) makes the gather a numpy fancy index and the upload a single
        copy.
        """
        vocab, _ = self.embed_tokens.shape
        flat = input_ids.reshape(-1)
        bad = (flat < 0) | (flat >= vocab)
        if bad.any():
            raise ValueError(f"token id {int(flat[bad][0])} out of range [0, {vocab}) "
                             f"at flat position {int(np.argmax(bad))}")
        if self.fused.embedding and ids is not None:
            ids.copy_from_numpy(flat.astype(np.int64))
            ops.embedding(out, ids, self.embed_tokens)
            return
        if self._host_table is None:
            self._host_table = self.embed_tokens.numpy()
        out.copy_from_numpy(self._host_table[flat])


def cache_limit(config: LlamaConfig, max_cache_len: int | None) -> int:
    """The longest cache a model of `config` holds: `max_cache_len`, at most the positions
    the config accepts; by default all of them (its max_position_embeddings: SmolLM2's
    8192), or 2048 where the config sets no limit (dynamic RoPE accepts any length)."""
    limit = config.position_limit
    if max_cache_len is None:
        return DEFAULT_MAX_CACHE_LEN if limit is None else limit
    wanted = _max_cache_len(max_cache_len)
    return wanted if limit is None else min(wanted, limit)


def default_cache_len(max_cache_len: int) -> int:
    """What is allocated when no length is asked for: the model's limit, at most 2048."""
    return min(max_cache_len, DEFAULT_MAX_CACHE_LEN)


def _max_cache_len(value: int | None) -> int:
    """None means the default; anything else must be a positive integer (0 once silently
    meant the default, and a negative length was accepted until generate failed)."""
    if value is None:
        return DEFAULT_MAX_CACHE_LEN
    return check_int(value, "max_cache_len", minimum=1)


class LlamaForCausalLM:
    # The config class of the checkpoints this class loads (a family's subclass has its own).
    config_class: type[LlamaConfig] = LlamaConfig

    def __init__(self, config: LlamaConfig, weights: dict[str, Tensor], device: Device,
                 dtype: DType, max_cache_len: int | None = None,
                 generation_config: GenerationConfig | None = None,
                 first_layer: int = 0, fused: str | frozenset[str] = "auto") -> None:
        from ...runtime import load

        self.config = config
        self.device = device
        self.dtype = dtype
        # The fused ops this model runs, chosen once from what the build exports.
        self.fused = Fused.of(plan(fused, load().build, device, dtype, config))
        self.model = LlamaModel(config, weights, first_layer, self.fused)
        # None on a pipeline stage that does not end the model (parallel.py)
        self.lm_head = weights.get("lm_head.weight")
        self._lm_head_t = self.lm_head.transpose(0, 1) if self.lm_head is not None else None
        # A cache cannot hold a position the model does not accept (dynamic RoPE accepts
        # any: the cache length is its limit).
        self.max_cache_len = cache_limit(config, max_cache_len)
        # Tables for the positions a default cache holds; a forward beyond them grows them
        # (rope.py): memory follows the positions used, not the checkpoint's limit (2^31 - 1
        # positions would be a 16 GiB table).
        self.rotary_emb = LlamaRotaryEmbedding(
            config, device, dtype, default_cache_len(self.max_cache_len),
            config.position_limit or max(self.max_cache_len, config.max_position_embeddings))
        # HF LLaMA's rotate_half pairs dimension i with i + head_dim / 2: GPT-NeoX style.
        self.rope_algo = ops.RoPEAlgo.GPT_NEOX
        self.buffers = BufferPool(config, device, dtype)
        self._scratch_caches: dict[int, KVCache] = {}
        # What `generate` uses when given no config: the checkpoint's generation defaults.
        self.generation_config = (generation_config if generation_config is not None
                                  else GenerationConfig.from_model_config(config))

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model_path: str | os.PathLike[str], device: str | Device = "cpu",
                        dtype: str | DType | None = None, *, max_cache_len: int | None = None,
                        progress: bool = True, allow_nonfinite: bool = False,
                        fused: str | frozenset[str] = "auto") -> LlamaForCausalLM:
        """Load a Hugging Face LLaMA checkpoint directory onto ``device``.

        ``dtype`` defaults to the config's (float64 checkpoints run in f32, the widest
        supported); ``max_cache_len`` (default: every position the checkpoint allows, its
        max_position_embeddings; 2048 where it sets no limit) is
        the longest prompt + generation a cache holds. ``allow_nonfinite`` loads weights
        holding NaN/Inf with a warning instead of refusing them (loading.py says why the
        default is an error). Arguments are checked before anything is read; then
        config.json, generation_config.json, the weights, in that order. Raises ConfigError
        or CheckpointError (both ValueError) naming the file, ValueError/TypeError naming
        the argument. ``fused``: "auto" (the fused ops the build exports, fusion.py),
        "plain" (none: InfiniCore 0.1.0's op sequence) or a set of fusion names.
        """
        check_load_arguments(model_path, dtype, max_cache_len, progress, allow_nonfinite)
        if not isinstance(device, (str, Device)):
            raise TypeError(f"device must be a name such as 'cpu' or 'nvidia:0' or a Device, "
                            f"got {device!r}")
        dev = Device.parse(device)
        path = Path(model_path)
        config = cls.config_class.from_pretrained(path)
        dt = resolve_dtype(config, dtype)
        generation_config = GenerationConfig.from_pretrained(path, config)
        host = load_state_dict(path, config.expected_weight_shapes(), dt.short,
                               tie_word_embeddings=config.tie_word_embeddings,
                               progress=progress, allow_nonfinite=allow_nonfinite)
        weights = upload_weights(host, dev, dt)
        weights.setdefault(LM_HEAD_WEIGHT, weights[EMBED_WEIGHT])
        return cls(config, weights, dev, dt, max_cache_len, generation_config, fused=fused)

    def reset_buffers(self) -> None:
        """Zero the activation buffers and drop the scratch caches of uncached calls: the
        next forward computes from memory no earlier call wrote. Reused buffers are what
        keeps a decode loop allocation-free; between independent runs (the conformance
        suite's checks) they would carry one run's values, or a backend's stray write,
        into the next."""
        self.buffers.zero()
        self._scratch_caches.clear()

    def new_cache(self, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        """A KV cache of `max_len` positions per row (default: the model's max_cache_len, at
        most 2048, so that a checkpoint allowing millions of positions does not allocate them
        all; pass a larger `max_len`, up to max_cache_len, for a longer context)."""
        batch_size = check_int(batch_size, "batch_size", minimum=1)
        max_len = (default_cache_len(self.max_cache_len) if max_len is None
                   else check_int(max_len, "max_len", minimum=1))
        if max_len > self.max_cache_len:
            raise CacheOverflowError(
                f"new_cache(max_len={max_len}): the model holds at most {self.max_cache_len} "
                "positions (max_cache_len; the checkpoint allows "
                f"{self.config.position_limit or 'any number'})")
        return KVCache(self.config, batch_size, max_len, self.device, self.dtype)

    def fixed_decoder(self, cache: KVCache, *, graph: bool | str = "auto"):
        """A decoder of one token per row per step with fixed shapes, replayed as a
        captured graph where the backend has graphs (decode_step.py)."""
        from .decode_step import FixedDecoder

        return FixedDecoder(self, cache, graph=graph)

    def prepare_decode(self, cache: KVCache, new_tokens: int) -> None:
        """Create, before a decode loop, the op descriptors its steps will need: the
        attention's shapes change with every new cache length (the other ops' do not, and
        every layer shares them), so the loop itself then creates none."""
        self.check_cache(cache)
        end = min(cache.length + new_tokens, cache.max_len)
        bufs = self.buffers.get(cache.batch_size, 1)
        # one layer of each window: the others share its shapes
        firsts = {layer.self_attn.window: layer for layer in reversed(self.model.layers)}
        for layer in firsts.values():
            layer.self_attn.prepare(bufs, cache, range(cache.length + 1, end + 1))

    # -- forward --------------------------------------------------------------------------

    def forward(self, input_ids: Sequence[Sequence[int]] | np.ndarray,
                position_ids: np.ndarray | None = None, *, cache: KVCache | None = None,
                attention_mask: Sequence[Sequence[int]] | np.ndarray | None = None,
                all_logits: bool = False, capture: dict[str, np.ndarray] | None = None,
                inject: Mapping[str, np.ndarray] | None = None) -> Tensor:
        """Logits of the last token [batch, 1, vocab] (or of every token, [batch, seq, vocab]).

        With `cache`, the tokens are appended after the cached ones; without, the call is
        a full recompute. `attention_mask` [batch, seq] (1 = token, 0 = padding, as in
        transformers) marks left padding: padding is never attended to, and each row's
        positions count its real tokens only. `position_ids` default to those positions
        (cache position + 0..seq-1 without padding). The returned
        tensor is a reused buffer: read it before the next call. `capture`, if given, is
        filled with host copies of the named intermediates of capture.py's capture points,
        in execution order; copying does not change the numerics. `inject` replaces the
        value of the named points right after they are produced (as [batch, seq, hidden]
        arrays), so what follows computes on the given values (an isolated run).
        """
        ids, bufs, cache, start, record = self.begin(input_ids, position_ids, cache,
                                                     attention_mask, capture, inject)
        self.embed(ids, bufs, record)
        self.run_layers(bufs, cache, start, record)
        cache.length = start + ids.shape[1]
        return self._head(bufs, all_logits, record)

    def begin(self, input_ids, position_ids, cache: KVCache | None, attention_mask,
              capture: dict | None = None, inject: Mapping | None = None, *,
              admitted: bool = False) -> tuple:
        """Check the arguments, reserve the cache, upload the positions: what every
        pipeline stage does before its part of a forward. `admitted`: the caller already
        recorded the tokens' padding in the cache and passes their positions. Every
        argument is checked before the cache records anything, so a refused call leaves
        it as it was."""
        ids = token_ids(input_ids, "input_ids", vocab_size=self.config.vocab_size)
        batch, seq = ids.shape
        mask = None if attention_mask is None else padding_mask(attention_mask, ids.shape)
        if cache is None:
            cache = self._scratch_cache(batch, seq)
        else:
            self.check_cache(cache)
        start = cache.reserve(batch, seq)
        if position_ids is None:
            pos = cache.next_positions(seq, mask)
        else:
            pos = token_ids(position_ids, "position_ids")
            if pos.shape != ids.shape:
                raise ValueError(f"position_ids shape {pos.shape} != input_ids shape {ids.shape}")
        if pos.min() < 0 or pos.max() >= self.rotary_emb.max_positions:
            raise ValueError(f"position ids must be in [0, {self.rotary_emb.max_positions}), "
                             f"got [{pos.min()}, {pos.max()}]")
        if not admitted:
            cache.admit(start, seq, mask)
        self.rotary_emb.ensure(int(pos.max()) + 1)
        bufs = self.buffers.get(batch, seq)
        bufs.pos_ids.copy_from_numpy(pos.reshape(-1).astype(np.int32))
        return ids, bufs, cache, start, self._recorder(capture, inject, batch, seq)

    def check_cache(self, cache: object) -> None:
        """Refuse, in one line and before any InfiniCore call, a cache this model cannot
        use: one made by another model (its layers, KV heads or head_dim differ), in
        another dtype or on another device. InfiniCore would fail on it deep inside an
        op (or write past a layer's K/V) after the cache had recorded the tokens."""
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache (from this model's new_cache()), got "
                            f"{type(cache).__name__}")
        c = self.config
        wrong = [f"{what} {got} (the model's: {want})" for what, got, want in (
            ("layers", cache.num_layers, c.num_hidden_layers),
            ("KV heads", cache.num_kv_heads, c.num_key_value_heads),
            ("head_dim", cache.head_dim, c.head_dim),
            ("dtype", cache.dtype, self.dtype),
            ("device", cache.device, self.device)) if got != want]
        if wrong:
            raise ValueError(f"cache does not fit this model: {', '.join(wrong)}; make it "
                             "with this model's new_cache()")

    def embed(self, ids: np.ndarray, bufs: Buffers, record: Capture | None) -> None:
        self.model.embed(ids, bufs.hidden, bufs.ids)
        if record:
            record("embed_tokens", bufs.hidden)

    def run_layers(self, bufs: Buffers, cache: KVCache, start: int,
                   record: Capture | None) -> None:
        step = CachedStep(bufs, cache, start, self.rotary_emb, self.rope_algo)
        for layer in self.model.layers:
            layer.forward(bufs, step, record)

    __call__ = forward

    def _head(self, bufs: Buffers, all_logits: bool, record: Capture | None) -> Tensor:
        eps = self.config.rms_norm_eps
        batch, seq = bufs.batch, bufs.seq
        if all_logits:
            ops.rms_norm(bufs.normed, bufs.hidden, self.model.norm, eps)
            if record:
                record("norm", bufs.normed)
            out = self.buffers.all_logits(bufs)
            ops.gemm(out, bufs.normed, self._lm_head_t)
            return out.view(batch, seq, self.config.vocab_size)
        # Only the last position of each sequence needs the final norm and the lm_head.
        last = bufs.hidden.view(batch, seq, self.config.hidden_size).narrow(1, seq - 1, 1)
        normed = bufs.last_normed.view(batch, 1, self.config.hidden_size)
        ops.rms_norm(normed, last, self.model.norm, eps)
        if record:
            record("norm", normed)
        ops.gemm(bufs.logits, bufs.last_normed, self._lm_head_t)
        return bufs.logits.view(batch, 1, self.config.vocab_size)

    def _scratch_cache(self, batch: int, seq: int) -> KVCache:
        """An uncached forward still needs K/V of its own tokens: a reusable private cache."""
        if seq > self.max_cache_len:
            raise ValueError(f"sequence of {seq} tokens exceeds max_cache_len "
                             f"{self.max_cache_len}")
        cache = self._scratch_caches.get(batch)
        if cache is None or cache.max_len < seq:
            cache = self._scratch_caches[batch] = KVCache(
                self.config, batch, min(max(seq, 16), self.max_cache_len), self.device,
                self.dtype)
        cache.reset()
        return cache

    @staticmethod
    def _recorder(capture: dict[str, np.ndarray] | None,
                  inject: Mapping[str, np.ndarray] | None, batch: int, seq: int
                  ) -> Capture | None:
        if capture is None and not inject:
            return None

        def record(name: str, t: Tensor) -> bool:
            if capture is not None:
                a = t.numpy()
                rows = a.shape[0] if a.ndim == 2 else math.prod(a.shape[:-1])
                capture[name] = a.reshape(batch, rows // batch, a.shape[-1])
            if inject and name in inject:
                value = np.asarray(inject[name])
                if value.size != t.numel:
                    raise ValueError(f"inject[{name!r}]: {value.shape} does not fit the "
                                     f"tensor {list(t.shape)}")
                t.copy_from_numpy(value.reshape(t.shape))
                return True
            return False

        return record


def check_load_arguments(model_path: object, dtype: object, max_cache_len: object,
                         progress: object, allow_nonfinite: object) -> None:
    """The arguments of a from_pretrained (any layout), checked before anything is read."""
    if not isinstance(model_path, (str, os.PathLike)):
        raise TypeError(f"model_path must be a path, got {type(model_path).__name__}")
    if dtype is not None and not isinstance(dtype, (str, DType)):
        raise TypeError(f"dtype must be 'f32', 'f16', 'bf16' or None, got {dtype!r}")
    _max_cache_len(max_cache_len)
    check_bool(progress, "progress")
    check_bool(allow_nonfinite, "allow_nonfinite")


def resolve_dtype(config: LlamaConfig, dtype: str | DType | None) -> DType:
    """The compute dtype: the one asked for, else the checkpoint's (float64 checkpoints
    run in f32, the widest supported)."""
    if dtype is not None:
        dt = DType.parse(dtype)
    elif config.dtype == "float64":
        dt = DType.F32
    else:
        dt = DType.parse(config.dtype or "f32")
    if dt not in _COMPUTE_DTYPES:
        raise ValueError(f"dtype {dt.short} not supported; use f32, f16 or bf16")
    return dt


def upload_weights(host: Mapping[str, np.ndarray], device: Device, dtype: DType
                   ) -> dict[str, Tensor]:
    """Host weights to `device`. q/k/v and gate/up are stacked on the host and uploaded
    once as the fused weight the modules use (fusing them on the device would hold every
    layer's weights twice while loading). A tied lm_head (the embedding's own array) is
    not copied: the caller points it at the embedding's device tensor."""
    groups = {}  # first part's full name -> (fused full name, every part's full name)
    for name in host:
        for prefix, (fused_name, parts) in (("self_attn.", QKV_WEIGHT), ("self_attn.", QKV_BIAS),
                                            ("mlp.", GATE_UP_WEIGHT), ("mlp.", GATE_UP_BIAS)):
            if name.endswith(prefix + parts[0]):
                base = name[:-len(parts[0])]
                if all(base + p in host for p in parts):
                    groups[name] = (base + fused_name, [base + p for p in parts])
    in_group = {p for _, parts in groups.values() for p in parts}
    weights: dict[str, Tensor] = {}
    for name, array in host.items():
        if name in groups:
            fused_name, parts = groups[name]
            weights[fused_name] = Tensor.from_numpy(np.concatenate([host[p] for p in parts]),
                                                    device, dtype)
        elif name in in_group or (name == LM_HEAD_WEIGHT and array is host.get(EMBED_WEIGHT)):
            continue
        else:
            weights[name] = Tensor.from_numpy(array, device, dtype)
    return weights


def padding_mask(mask: Sequence[Sequence[int]] | np.ndarray, shape: tuple[int, int]
                 ) -> np.ndarray:
    """An attention_mask as transformers takes it: [batch, seq] of 0 (padding) and 1."""
    m = np.asarray(mask)
    if m.shape != shape:
        raise ValueError(f"attention_mask shape {m.shape} != input_ids shape {shape}")
    if m.dtype.kind not in "biu" or not np.isin(m, (0, 1)).all():
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
    if not m.any(axis=1).all():
        raise ValueError("attention_mask: a row without any token (all 0)")
    return m.astype(bool)
