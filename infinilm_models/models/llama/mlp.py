"""LlamaMLP: down_proj(silu(gate_proj(x)) * up_proj(x))."""

from __future__ import annotations

from ...runtime import Tensor, ops
from .buffers import Buffers


class LlamaMLP:
    def __init__(self, weights: dict[str, Tensor]) -> None:
        self.gate_proj = weights["gate_proj.weight"]
        self.up_proj = weights["up_proj.weight"]
        self.down_proj = weights["down_proj.weight"]
        self._gate_t, self._up_t, self._down_t = (
            w.transpose(0, 1) for w in (self.gate_proj, self.up_proj, self.down_proj))

    def forward(self, x: Tensor, bufs: Buffers) -> Tensor:
        """x [T, hidden] (normed) -> bufs.mlp_out [T, hidden]."""
        ops.gemm(bufs.gate, x, self._gate_t)
        ops.gemm(bufs.up, x, self._up_t)
        ops.swiglu(bufs.act, bufs.up, bufs.gate)
        ops.gemm(bufs.mlp_out, bufs.act, self._down_t)
        return bufs.mlp_out
