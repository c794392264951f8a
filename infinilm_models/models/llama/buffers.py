"""Activation buffers of one forward shape, allocated once and reused on every call.

A decode loop calls forward with the same (batch, seq=1) shape at every step, so after
the first step no op allocates: outputs land in these tensors, and the attention scores
use a [.., max_len] buffer narrowed to the current cache length.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from ...runtime import Device, DType, Tensor
from ...runtime.memory import zero_fill
from .configuration import LlamaConfig


@dataclass
class Buffers:
    batch: int
    seq: int
    hidden: Tensor  # [T, hidden] the residual stream (T = batch * seq)
    normed: Tensor  # [T, hidden]
    qkv: Tensor  # [T, (heads + 2 kv_heads) * head_dim]: one gemm over the fused q|k|v weight
    q: Tensor  # [T, heads * head_dim] view of qkv
    k: Tensor  # [T, kv_heads * head_dim] view of qkv
    v: Tensor  # [T, kv_heads * head_dim] view of qkv
    q_heads: Tensor  # [batch * kv_heads, group * seq, head_dim]
    scores: Tensor  # [batch * kv_heads, group * seq, n]: n grown on demand (scores_for)
    attn: Tensor  # [batch * kv_heads, group * seq, head_dim]
    attn_tokens: Tensor  # [T, heads * head_dim]
    attn_out: Tensor  # [T, hidden]
    gate_up: Tensor | None  # [T, 2 * intermediate]: one gemm over the fused gate|up weight
    gate: Tensor  # [T, intermediate] view of gate_up
    up: Tensor  # [T, intermediate] view of gate_up
    act: Tensor  # [T, intermediate]
    mlp_out: Tensor  # [T, hidden]
    pos_ids: Tensor  # [T] int32
    ids: Tensor  # [T] int64: token ids on the device (the embedding op's input)
    last_normed: Tensor  # [batch, hidden]
    logits: Tensor  # [batch, vocab]
    all_logits: Tensor | None = None  # [T, vocab], allocated on first request
    # Views of these buffers that modules build once and reuse on every call (a decode
    # step would otherwise rebuild dozens of identical views per layer).
    views: dict = field(default_factory=dict)
    # allocates a zeroed tensor of this pool's dtype and device (scores_for grows with it)
    allocate: object = None

    def scores_for(self, n: int) -> Tensor:
        """The scores of `n` keys per query row: [batch * kv_heads, group * seq, n], a view
        of a buffer grown (to the next power of two) when a longer cache first needs it,
        so a model's buffers follow the caches it is given, not the longest it allows."""
        if self.scores.shape[2] < n:
            cols = 1 << (n - 1).bit_length()
            self.scores = self.allocate((self.scores.shape[0], self.scores.shape[1], cols))
        return self.scores.narrow(2, 0, n)


class BufferPool:
    """Buffers per (batch, seq), a few shapes kept (prefill shapes vary, decode repeats)."""

    def __init__(self, config: LlamaConfig, device: Device, dtype: DType,
                 keep: int = 8) -> None:
        self.config, self.device, self.dtype = config, device, dtype
        self.keep = keep
        self._pool: OrderedDict[tuple[int, int], Buffers] = OrderedDict()

    def fresh(self, batch: int, seq: int) -> Buffers:
        """Buffers of their own, outside the pool: a holder that keeps pointers (a captured
        decode step) never shares memory with the plain path's calls of the same shape."""
        return self._allocate(batch, seq)

    def zero(self) -> None:
        """Zero every pooled buffer: the next call of each shape starts from memory no
        earlier call wrote (the pointers stay, so views and descriptors stay valid)."""
        seen: set[int] = set()
        for bufs in self._pool.values():
            for value in vars(bufs).values():
                if isinstance(value, Tensor) and id(value.buffer) not in seen:
                    seen.add(id(value.buffer))
                    zero_fill(value.buffer)

    def get(self, batch: int, seq: int) -> Buffers:
        key = (batch, seq)
        bufs = self._pool.get(key)
        if bufs is None:
            bufs = self._pool[key] = self._allocate(batch, seq)
            if len(self._pool) > self.keep:
                self._pool.popitem(last=False)
        self._pool.move_to_end(key)
        return bufs

    def _allocate(self, batch: int, seq: int) -> Buffers:
        c = self.config
        t = batch * seq
        group = c.num_attention_heads // c.num_key_value_heads
        rows = batch * c.num_key_value_heads

        # Zeroed, not empty: InfiniCore 0.1.0's CPU f32 gemm reads C even when beta == 0,
        # so garbage NaNs in a fresh output buffer would leak into the result.
        def z(*shape: int, dtype: DType | None = None) -> Tensor:
            return Tensor.zeros(shape, dtype or self.dtype, self.device)

        qd, kvd = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        qkv = z(t, qd + 2 * kvd)
        inter = c.intermediate_size
        # InfiniCore 0.1.0's CPU elementwise ops read a strided [T, 1] view as if it were
        # contiguous (known defect cpu-elementwise-strided-last-dim-1): with one
        # intermediate feature the gate and up halves of the fused buffer would be such
        # views, so they get buffers of their own (and two gemms) there.
        gate_up = z(t, 2 * inter) if inter > 1 else None
        return Buffers(
            batch=batch, seq=seq,
            hidden=z(t, c.hidden_size), normed=z(t, c.hidden_size),
            qkv=qkv, q=qkv.narrow(1, 0, qd), k=qkv.narrow(1, qd, kvd),
            v=qkv.narrow(1, qd + kvd, kvd),
            q_heads=z(rows, group * seq, c.head_dim),
            # as many keys as its queries (a prefill); grown for a longer cache
            scores=z(rows, group * seq, max(16, 1 << (seq - 1).bit_length())),
            attn=z(rows, group * seq, c.head_dim),
            attn_tokens=z(t, c.num_attention_heads * c.head_dim),
            attn_out=z(t, c.hidden_size),
            gate_up=gate_up,
            gate=gate_up.narrow(1, 0, inter) if gate_up is not None else z(t, 1),
            up=gate_up.narrow(1, inter, inter) if gate_up is not None else z(t, 1),
            act=z(t, c.intermediate_size), mlp_out=z(t, c.hidden_size),
            pos_ids=z(t, dtype=DType.I32), ids=z(t, dtype=DType.I64),
            last_normed=z(batch, c.hidden_size), logits=z(batch, c.vocab_size),
            allocate=lambda shape: z(*shape),
        )

    def all_logits(self, bufs: Buffers) -> Tensor:
        if bufs.all_logits is None:
            bufs.all_logits = Tensor.zeros((bufs.batch * bufs.seq, self.config.vocab_size),
                                           self.dtype, self.device)
        return bufs.all_logits
