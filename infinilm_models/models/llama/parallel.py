"""Tensor and pipeline parallelism: the config's plans applied over ranks of InfiniCore
devices, collectives through the runtime's communicator (InfiniCCL, or the loopback for
ranks that share the CPU).

    model = AutoLlamaModel.from_pretrained(path, "nvidia", "bf16", tp=2, pp=1)
    model = AutoLlamaModel.from_pretrained(path, "cpu", "f32", tp=2, pp=2)  # 4 CPU ranks

Layout: `pp` pipeline stages of `tp` ranks each, rank = stage * tp + t, one thread per
rank (ctypes releases the GIL, so ranks on different devices run at once; every runtime
call of a thread goes to its own device).
  * tensor parallel (config.base_model_tp_plan): "colwise" projections (q, k, v, gate,
    up) keep the rank's output features (its query heads, KV heads, intermediate slice);
    "rowwise" ones (o_proj, down_proj) its input features, and the partial outputs are
    summed by an all-reduce; the rank that adds the residual is rank 0 of the group. KV
    heads are replicated when tp exceeds them (tp a multiple of kv_heads); the KV cache is
    sharded with the heads. Each rank reads only its slices from the checkpoint.
  * pipeline parallel (config.base_model_pp_plan): stage 0 holds embed_tokens, every stage
    a contiguous range of layers, the last one norm and lm_head; the hidden states of a
    micro-batch pass from stage to stage through the host, and at batch > 1 the batch is
    split into micro-batches so stages work on different ones at once.
"""

from __future__ import annotations

import dataclasses
import queue
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...arguments import check_int, token_ids
from ...generation import GenerationConfig
from ...runtime import Device, DType, Tensor, ops
from ...runtime.comm import Communicator, make_communicator
from ..registry import model_class
from .configuration import LlamaConfig
from .kv_cache import KVCache
from .loading import EMBED_WEIGHT, LM_HEAD_WEIGHT, load_state_dict
from .modeling_llama import (
    LlamaForCausalLM,
    check_load_arguments,
    padding_mask,
    resolve_dtype,
    upload_weights,
)


class PlanError(ValueError):
    """A parallel layout this checkpoint cannot be split into."""


@dataclass(frozen=True)
class RankShape:
    """What one tensor-parallel rank holds of every layer."""

    q_heads: tuple[int, int]  # [first, stop) of the query heads
    kv_heads: tuple[int, int]  # of the KV heads (replicated beyond tp > kv_heads)
    intermediate: tuple[int, int]


def split_heads(config: LlamaConfig, tp: int) -> list[RankShape]:
    """Each rank's heads and intermediate slice; refuses a split that does not divide."""
    nh, nkv, inter = (config.num_attention_heads, config.num_key_value_heads,
                      config.intermediate_size)
    where = config.source
    if nh % tp:
        raise PlanError(f"{where}: tp={tp} does not divide num_attention_heads ({nh})")
    if nkv % tp and tp % nkv:
        raise PlanError(f"{where}: tp={tp} must divide num_key_value_heads ({nkv}) or be a "
                        "multiple of it (then KV heads are replicated)")
    if inter % tp:
        raise PlanError(f"{where}: tp={tp} does not divide intermediate_size ({inter})")
    nh_l, inter_l = nh // tp, inter // tp
    out = []
    for r in range(tp):
        if nkv >= tp:
            kv = (r * (nkv // tp), (r + 1) * (nkv // tp))
        else:  # tp / nkv ranks share one KV head
            kv = (r * nkv // tp, r * nkv // tp + 1)
        out.append(RankShape((r * nh_l, (r + 1) * nh_l), kv, (r * inter_l, (r + 1) * inter_l)))
    return out


def split_layers(num_layers: int, pp: int) -> list[range]:
    """Contiguous layer ranges, the first stages one layer longer when it does not divide."""
    if pp > num_layers:
        raise PlanError(f"pp={pp} stages for {num_layers} layers: every stage needs a layer")
    base, extra = divmod(num_layers, pp)
    out, at = [], 0
    for s in range(pp):
        n = base + (1 if s < extra else 0)
        out.append(range(at, at + n))
        at += n
    return out


def _plan_style(config: LlamaConfig, module: str) -> str | None:
    """'colwise' / 'rowwise' for `module` (e.g. layers.3.self_attn.q_proj) by the plan."""
    for pattern, style in config.base_model_tp_plan.items():
        regex = ".*".join(re.escape(p) for p in pattern.split("*"))
        if re.fullmatch(regex, module):
            return style
    return None


def slicer(config: LlamaConfig, shape: RankShape
           ) -> Callable[[str, tuple[int, ...]], tuple[int, int, int] | None]:
    """(dim, start, stop) of the rank's part of a weight, from the plan: the unit of a
    split is the module's (query heads for q/o, KV heads for k/v, features for the MLP).
    A colwise module's bias is split with its output features; a rowwise one's is whole
    (rank 0 adds it once, before the all-reduce)."""
    d = config.head_dim

    def part(name: str, _shape: tuple[int, ...]) -> tuple[int, int, int] | None:
        module, _, kind = name.removeprefix("model.").rpartition(".")
        style = _plan_style(config, module)
        if style not in ("colwise", "rowwise") or (kind == "bias" and style == "rowwise"):
            return None
        kind = module.rsplit(".", 1)[-1]
        lo, hi = {"q_proj": shape.q_heads, "o_proj": shape.q_heads,
                  "k_proj": shape.kv_heads, "v_proj": shape.kv_heads}.get(kind, (None, None))
        if lo is not None:
            lo, hi = lo * d, hi * d
        else:
            lo, hi = shape.intermediate
        return (0 if style == "colwise" else 1, lo, hi)

    return part


def rank_config(config: LlamaConfig, shape: RankShape, layers: range) -> LlamaConfig:
    return dataclasses.replace(
        config, num_attention_heads=shape.q_heads[1] - shape.q_heads[0],
        num_key_value_heads=shape.kv_heads[1] - shape.kv_heads[0],
        intermediate_size=shape.intermediate[1] - shape.intermediate[0],
        num_hidden_layers=len(layers), head_dim=config.head_dim,
        **config.stage_fields(layers))


def resolve_devices(device: str | Device | Sequence[str | Device], world: int) -> list[Device]:
    """A list of `world` devices: given, or the first `world` of a type ("nvidia" ->
    nvidia:0..world-1; "cpu" -> the CPU `world` times: ranks share it, the loopback)."""
    if isinstance(device, (str, Device)) and not (isinstance(device, str) and "," in device):
        dev = Device.parse(device)
        if dev.type == "cpu":
            return [dev] * world
        return [Device(dev.type, dev.index + i) for i in range(world)]
    items = device.split(",") if isinstance(device, str) else list(device)
    devs = [Device.parse(d) for d in items]
    if len(devs) != world:
        raise PlanError(f"tp x pp = {world} ranks need {world} devices, got {len(devs)}: "
                        f"{[str(d) for d in devs]}")
    return devs


class _Worker:
    """One persistent thread per rank: jobs run on it in order."""

    def __init__(self, name: str) -> None:
        self.jobs: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            job, done = self.jobs.get()
            if job is None:
                return
            try:
                done.put((True, job()))
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                done.put((False, e))

    def submit(self, job: Callable[[], object]) -> queue.Queue:
        done: queue.Queue = queue.Queue(maxsize=1)
        self.jobs.put((job, done))
        return done

    def stop(self) -> None:
        self.jobs.put((None, None))


class ParallelCache:
    """The KV cache of a parallel model: one KVCache per rank (its layers, its KV heads)."""

    def __init__(self, caches: list[KVCache]) -> None:
        self.caches = caches
        self.batch_size = caches[0].batch_size
        self.max_len = caches[0].max_len

    @property
    def length(self) -> int:
        return self.caches[0].length

    @length.setter
    def length(self, value: int) -> None:
        for c in self.caches:
            c.length = value

    def reset(self) -> None:
        for c in self.caches:
            c.reset()

    def truncate(self, length: int) -> None:
        for c in self.caches:
            c.truncate(length)


class ParallelLlamaForCausalLM:
    """LLaMA over tp x pp ranks; the same forward/new_cache/prepare_decode as
    LlamaForCausalLM, so `generate` and the conformance suite use it unchanged."""

    def __init__(self, config: LlamaConfig, ranks: list[LlamaForCausalLM], tp: int, pp: int,
                 comms: list[Communicator], stages: list[range],
                 generation_config: GenerationConfig) -> None:
        self.config, self.tp, self.pp = config, tp, pp
        self.shapes = split_heads(config, tp)  # what rank t of every stage holds
        self.ranks, self.comms, self.stages = ranks, comms, stages
        self.generation_config = generation_config
        last = ranks[(pp - 1) * tp]
        self.device, self.dtype = last.device, last.dtype  # where the logits are
        self.max_cache_len = last.max_cache_len
        self._workers = [_Worker(f"rank{r}") for r in range(len(ranks))]
        self._outputs: dict[tuple, Tensor] = {}
        for s in range(pp):
            for t in range(tp):
                rank = ranks[s * tp + t]
                for layer in rank.model.layers:
                    if tp > 1:
                        layer.all_reduce = self._reducer(comms[s], t)
                    layer.adds_residual = t == 0

    @staticmethod
    def _reducer(comm: Communicator, t: int) -> Callable[[Tensor], None]:
        return lambda x: comm.all_reduce(x, rank=t)

    def reset_buffers(self) -> None:
        """Every rank's buffers zeroed and the model's own outputs dropped (see
        LlamaForCausalLM.reset_buffers)."""
        for rank in self.ranks:
            rank.reset_buffers()
        self._outputs.clear()

    def rank(self, stage: int, t: int) -> LlamaForCausalLM:
        return self.ranks[stage * self.tp + t]

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model_path: str | Path, device: str | Device | Sequence = "cpu",
                        dtype: str | DType | None = None, *, tp: int = 1, pp: int = 1,
                        max_cache_len: int | None = None, progress: bool = True,
                        allow_nonfinite: bool = False, timing: bool = False
                        ) -> ParallelLlamaForCausalLM:
        tp = check_int(tp, "tp", minimum=1)
        pp = check_int(pp, "pp", minimum=1)
        check_load_arguments(model_path, dtype, max_cache_len, progress, allow_nonfinite)
        path = Path(model_path)
        model_cls = model_class(path)
        config = model_cls.config_class.from_pretrained(path)
        shapes = split_heads(config, tp)
        stages = split_layers(config.num_hidden_layers, pp)
        devices = resolve_devices(device, tp * pp)
        dt = resolve_dtype(config, dtype)
        generation_config = GenerationConfig.from_pretrained(path, config)
        ranks: list[LlamaForCausalLM] = []
        for s, layers in enumerate(stages):
            for t in range(tp):
                ranks.append(_load_rank(model_cls, path, config, shapes[t], layers, s == 0,
                                        s == pp - 1, devices[s * tp + t], dt, max_cache_len,
                                        progress and s == 0 and t == 0, allow_nonfinite,
                                        generation_config))
        comms = [make_communicator(devices[s * tp:(s + 1) * tp], timing=timing)
                 if tp > 1 else None for s in range(pp)]
        return cls(config, ranks, tp, pp, comms, stages, generation_config)

    def close(self) -> None:
        for w in self._workers:
            w.stop()
        for c in self.comms:
            if c is not None:
                c.close()

    # -- the model interface ---------------------------------------------------------------

    def new_cache(self, batch_size: int = 1, max_len: int | None = None) -> ParallelCache:
        return ParallelCache([r.new_cache(batch_size, max_len) for r in self.ranks])

    def check_cache(self, cache: object) -> None:
        """Refuse a cache of another model, layout, dtype or device (one line, before any
        InfiniCore call): each rank checks its own (LlamaForCausalLM.check_cache)."""
        if not isinstance(cache, ParallelCache) or len(cache.caches) != len(self.ranks):
            got = (f"a ParallelCache of {len(cache.caches)} ranks"
                   if isinstance(cache, ParallelCache) else type(cache).__name__)
            raise TypeError(f"cache must be this model's new_cache() (a ParallelCache of "
                            f"{len(self.ranks)} ranks), got {got}")
        for i, (r, c) in enumerate(zip(self.ranks, cache.caches)):
            try:
                r.check_cache(c)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"rank {i}: {exc}") from None

    def prepare_decode(self, cache: ParallelCache, new_tokens: int) -> None:
        self.check_cache(cache)
        for r, c in zip(self.ranks, cache.caches):
            r.prepare_decode(c, new_tokens)

    def all_reduce_seconds(self) -> float:
        """Seconds spent in all-reduce calls so far (rank 0 of each group, summed)."""
        return sum(c.stats(0).seconds for c in self.comms if c is not None)

    def forward(self, input_ids, position_ids: np.ndarray | None = None, *,
                cache: ParallelCache | None = None, attention_mask=None,
                all_logits: bool = False, capture: dict[str, np.ndarray] | None = None,
                micro_batches: int | None = None) -> Tensor:
        """Logits [batch, 1 or seq, vocab] on the last stage's device (a reused buffer)."""
        ids = token_ids(input_ids, "input_ids", vocab_size=self.config.vocab_size)
        batch, seq = ids.shape
        mask = None if attention_mask is None else padding_mask(attention_mask, ids.shape)
        if cache is None:  # an uncached forward: a private cache of this size
            cache = self.new_cache(batch, min(max(seq, 16), self.max_cache_len))
        else:
            self.check_cache(cache)
        start = cache.caches[0].reserve(batch, seq)
        positions = [c.admit(start, seq, mask) for c in cache.caches][0]
        if position_ids is not None:
            positions = token_ids(position_ids, "position_ids")
        # Micro-batches let pipeline stages overlap; capture keeps one (simple to merge).
        n_mb = 1 if (self.pp == 1 or capture is not None) else min(batch, micro_batches
                                                                   or self.pp)
        bounds = np.linspace(0, batch, n_mb + 1).astype(int)
        mbs = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        out = self._output(batch, seq if all_logits else 1)
        # hidden states of micro-batch m from stage s to every rank of stage s + 1
        handoff = [[_Handoff() for _ in mbs] for _ in range(self.pp)]
        captures = [dict() if capture is not None else None for _ in self.ranks]

        def job(s: int, t: int) -> Callable[[], None]:
            rank = self.rank(s, t)
            rank_cache = cache.caches[s * self.tp + t]

            def run() -> None:
                for m, (a, b) in enumerate(mbs):
                    c = rank_cache if len(mbs) == 1 else rank_cache.rows(a, b - a)
                    cap = captures[s * self.tp + t]
                    _, bufs, _, _, record = rank.begin(ids[a:b], positions[a:b], c, None,
                                                       cap, admitted=True)
                    if s == 0:
                        rank.embed(ids[a:b], bufs, record)
                    else:
                        bufs.hidden.copy_from_numpy(handoff[s - 1][m].get())
                    rank.run_layers(bufs, c, start, record)
                    if s < self.pp - 1:
                        if t == 0:
                            handoff[s][m].put(bufs.hidden.numpy())
                    elif t == 0:
                        logits = rank._head(bufs, all_logits, record)
                        rows = logits.view(b - a, -1)
                        ops.copy(out.narrow(0, a, b - a).view(b - a, -1), rows)
            return run

        waits = [self._workers[s * self.tp + t].submit(job(s, t))
                 for s in range(self.pp) for t in range(self.tp)]
        errors = [e for ok, e in (w.get() for w in waits) if not ok]
        if errors:
            raise errors[0]
        cache.length = start + seq
        if capture is not None:
            for s in range(self.pp):
                capture.update(captures[s * self.tp] or {})
        return out

    __call__ = forward

    def _output(self, batch: int, rows: int) -> Tensor:
        key = (batch, rows)
        t = self._outputs.get(key)
        if t is None:
            t = self._outputs[key] = Tensor.zeros((batch, rows, self.config.vocab_size),
                                                  self.dtype, self.device)
        return t


class _Handoff:
    """One value handed from a stage to every rank of the next."""

    def __init__(self) -> None:
        self._value = None
        self._ready = threading.Event()

    def put(self, value) -> None:
        self._value = value
        self._ready.set()

    def get(self):
        self._ready.wait()
        return self._value


def _load_rank(model_cls: type[LlamaForCausalLM], path: Path, config: LlamaConfig,
               shape: RankShape, layers: range, first_stage: bool, last_stage: bool,
               device: Device, dtype: DType,
               max_cache_len: int | None, progress: bool, allow_nonfinite: bool,
               generation_config: GenerationConfig) -> LlamaForCausalLM:
    """One rank's model: its stage's layers, its slices of them, read from the files."""
    def keep(name: str) -> bool:
        m = re.match(r"model\.layers\.(\d+)\.", name)
        if m:
            return int(m.group(1)) in layers
        if name == EMBED_WEIGHT:
            return first_stage or (last_stage and config.tie_word_embeddings)
        return last_stage  # model.norm.weight, lm_head.weight

    host = load_state_dict(path, config.expected_weight_shapes(), dtype.short,
                           tie_word_embeddings=config.tie_word_embeddings, progress=progress,
                           allow_nonfinite=allow_nonfinite, select=keep,
                           shard=slicer(config, shape))
    weights = upload_weights(host, device, dtype)
    if last_stage:
        weights.setdefault(LM_HEAD_WEIGHT, weights.get(EMBED_WEIGHT))
    local = rank_config(config, shape, layers)
    return model_cls(local, weights, device, dtype, max_cache_len, generation_config,
                     first_layer=layers.start)

