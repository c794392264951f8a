"""The fixed-shape decode step: one token per row, with shapes and pointers that do not
depend on how long the cache is, so that a device graph can be captured once and replayed
at every step.

    decoder = FixedDecoder(model, cache)          # graph="auto": captured where possible
    logits = decoder.step(next_ids)               # [batch, 1, vocab], one step

What moves from step to step goes into fixed buffers before the step (host-side work, not
captured): the token's embedding rows and positions (one copy each) and the step's mask
(0 at the cached positions and at the slot, a large negative value beyond the length).
The new token's K/V are written to a fixed slot, attended there, and copied to their
position after the step by one copy over all layers (two calls: K and V); keeping that
copy outside the graph is what lets one graph serve many cache lengths.

Spans: the attention reads the cache's first n positions, n the smallest power of two
(at least MIN_SPAN) past the cache length, the whole allocation at most, and the slot is
the span's last position (still past every cached one). So a step's attention costs what
is filled (within 2x), not what was allocated: a 4096-position cache holding 200 reads
256. Each span has its own shapes and pointers, hence its own graph, captured the second
time it is used and kept (a 2048-position decode uses log2(2048 / 64) + 1 = 6).

With the build's embedding op the token rows are gathered inside the step (only the ids
are uploaded before it), and with kv_caching the new K/V are appended at the cache length
held on the device, so no slot and no copy after the step are needed: where every op is
capturable (upstream InfiniCore on NVIDIA) the whole step is one graph.

On a backend without a graph API (the CPU) the same step runs eagerly; it is the plain
decode path's numbers (the extra positions get zero probability) and the CI checks so.
"""

from __future__ import annotations

import numpy as np

from ...runtime import Tensor, ops
from ...runtime.capabilities import current_build, uncapturable_ops
from ...runtime.device import Stream, stream_scope
from ...runtime.graph import CapturedStep, graph_backend
from .attention import FixedStep
from .kv_cache import KVCache

MIN_SPAN = 64


class FixedDecoder:
    def __init__(self, model, cache: KVCache, *, graph: bool | str = "auto",
                 eager_ops: tuple[str, ...] | None = None) -> None:
        if graph not in (True, False, "auto"):
            raise ValueError(f"graph must be True, False or 'auto', got {graph!r}")
        model.check_cache(cache)  # another model's, dtype's or device's: one line, first
        self.model, self.cache = model, cache
        b, c = cache.batch_size, model.config
        self.group = c.num_attention_heads // c.num_key_value_heads
        # Buffers of its own (a graph points at them), never the plain path's: a replay
        # that computes nothing must not return the logits a plain step left there.
        self.bufs = model.buffers.fresh(b, 1)
        rows, n = b * c.num_key_value_heads, cache.max_len + 1
        # kv_caching appends at the cache length read on the device (one int64 per row)
        self.append_in_place = model.fused.kv_caching
        self.lengths = Tensor.zeros((b,), "i64", model.device) if self.append_in_place \
            else None
        # The windows among the layers (None: full attention): one mask each.
        self.windows = sorted({layer.self_attn.window for layer in model.model.layers},
                              key=lambda w: -1 if w is None else w)
        # Paged attention cannot skip padding inside a row nor see a window: only an
        # unpadded cache of full-attention layers.
        self.paged = self.append_in_place and model.fused.paged_attention and \
            not cache.masked and self.windows == [None]
        self.seq_lens = Tensor.zeros((b,), "i64", model.device) if self.paged else None
        tables = Tensor.from_numpy(np.arange(b, dtype=np.int64).reshape(b, 1), model.device,
                                   "i64") if self.paged else None
        self.fixed = FixedStep(cache, self.bufs,
                               Tensor.zeros((rows, self.group, n), model.dtype, model.device),
                               self._masks(), model.rotary_emb, model.rope_algo,
                               self.lengths, self.seq_lens, tables)
        has_graphs = graph_backend(model.device) is not None
        if graph is True and not has_graphs:
            raise ValueError(f"graph=True: {model.device.type} has no graph API here")
        self.use_graph = bool(graph) and has_graphs
        self.eager_ops = eager_ops if eager_ops is not None else \
            uncapturable_ops(current_build(), model.device.type)
        self.stream = Stream(model.device) if self.use_graph else None
        self.captured: dict[int, CapturedStep] = {}  # span -> its graph
        self.used: set[int] = set()  # spans run once eagerly (handles, descriptors)
        self.last_span: int | None = None
        self._tables = None
        self.steps = 0

    def span(self, start: int) -> int:
        """The positions the step at cache length `start` attends over (see the module's
        docstring); the whole allocation (max_len + 1) for paged attention."""
        whole = self.cache.max_len + 1
        if self.paged:
            return whole
        n = MIN_SPAN
        while n < start + 1:
            n *= 2
        return min(n, whole)

    def _masks(self, n: int | None = None) -> dict:
        return {w: self.cache.fixed_mask(self.group, self.append_in_place, w, n)
                for w in self.windows}

    def _device_step(self) -> Tensor:
        m = self.model
        if m.fused.embedding:
            ops.embedding(self.bufs.hidden, self.bufs.ids, m.model.embed_tokens)
        for layer in m.model.layers:
            layer.forward(self.bufs, self.fixed)
        return m._head(self.bufs, False, None)

    def step(self, token_ids: np.ndarray) -> Tensor:
        """Logits [batch, 1, vocab] of one new token per row (read before the next step)."""
        cache, m, bufs = self.cache, self.model, self.bufs
        ids = np.asarray(token_ids, dtype=np.int64).reshape(cache.batch_size, 1)
        start = cache.reserve(cache.batch_size, 1)
        pos = cache.admit(start, 1, None)
        m.rotary_emb.ensure(int(pos.max()) + 1)
        if m.fused.embedding:  # the gather runs inside the step: only the ids go up
            bufs.ids.copy_from_numpy(ids.reshape(-1))
        else:
            m.model.embed(ids, bufs.hidden)
        bufs.pos_ids.copy_from_numpy(pos.reshape(-1).astype(np.int32))
        if self.lengths is not None:
            self.lengths.copy_from_numpy(np.full(cache.batch_size, start, dtype=np.int64))
        n = self.last_span = self.span(start)
        slot = None if self.append_in_place else n - 1
        if self.seq_lens is not None:
            self.seq_lens.copy_from_numpy(np.full(cache.batch_size, start + 1, dtype=np.int64))
        else:
            self.fixed.use(n, self._masks(n), slot)  # the span's masks, uploaded
        if not self.use_graph:
            out = self._device_step()
        else:
            tables = (m.rotary_emb.sin.data_ptr, m.rotary_emb.cos.data_ptr)
            if self.captured and tables != self._tables:
                self.close()  # the RoPE tables grew: their pointers moved
            captured = self.captured.get(n)
            if captured is None and n in self.used:
                captured = self.captured[n] = CapturedStep(
                    m.device, self.stream, self._device_step, self.eager_ops).capture()
                self._tables = tables
            with stream_scope(self.stream.handle):
                if captured is None:  # a span's first step eagerly: handles, descriptors
                    self._device_step()
                    self.used.add(n)
                else:
                    captured.replay()
            out = bufs.logits.view(cache.batch_size, 1, m.config.vocab_size)
        if not self.append_in_place:
            cache.commit_slot(start, slot)
        cache.length = start + 1
        self.steps += 1
        return out

    @property
    def current(self) -> CapturedStep | None:
        """The graph of the last step's span (None: it ran eagerly)."""
        return self.captured.get(self.last_span)

    @property
    def graphs(self) -> int:
        """Device graphs held: one per span used twice (each may hold several segments
        where an op is not capturable)."""
        return len(self.captured)

    def close(self) -> None:
        for captured in self.captured.values():
            captured.close()
        self.captured.clear()
