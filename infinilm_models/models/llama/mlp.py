"""LlamaMLP: down_proj(silu(gate_proj(x)) * up_proj(x)).

    gate_up  = x @ [gate_proj; up_proj].T      one gemm over the fused weight
    act      = swiglu(up, gate)                 = up * silu(gate)
    hidden  += act @ down_proj.T                the residual folded in (beta = 1)

With silu_and_mul in the build (fusion.py) the activation is that op over gate_up
itself (vLLM's layout: the gate half, then the up half), instead of swiglu over its two
halves.
"""

from __future__ import annotations

from ...runtime import Tensor, ops
from .attention import fused
from .buffers import Buffers
from .fusion import Fused

GATE_UP_WEIGHT = ("gate_up_proj.weight", ("gate_proj.weight", "up_proj.weight"))


class LlamaMLP:
    def __init__(self, weights: dict[str, Tensor], fusions: Fused | None = None) -> None:
        self.silu_and_mul = bool(fusions and fusions.silu_and_mul)
        self.gate_up_proj = fused(weights, *GATE_UP_WEIGHT)
        inter = self.gate_up_proj.shape[0] // 2
        self.gate_proj = self.gate_up_proj.narrow(0, 0, inter)
        self.up_proj = self.gate_up_proj.narrow(0, inter, inter)
        self.down_proj = weights["down_proj.weight"]
        self._gate_up_t, self._down_t = (self.gate_up_proj.transpose(0, 1),
                                         self.down_proj.transpose(0, 1))

    def forward(self, x: Tensor, bufs: Buffers, out: Tensor, residual: bool) -> Tensor:
        """x [T, hidden] (normed) -> `out` [T, hidden] (out += mlp with `residual`)."""
        if bufs.gate_up is not None:
            ops.gemm(bufs.gate_up, x, self._gate_up_t)
        else:  # one intermediate feature: see buffers.py
            ops.gemm(bufs.gate, x, self.gate_proj.transpose(0, 1))
            ops.gemm(bufs.up, x, self.up_proj.transpose(0, 1))
        if self.silu_and_mul and bufs.gate_up is not None:
            ops.silu_and_mul(bufs.act, bufs.gate_up)
        else:
            ops.swiglu(bufs.act, bufs.up, bufs.gate)
        ops.gemm(out, bufs.act, self._down_t, 1.0, 1.0 if residual else 0.0)
        return out
