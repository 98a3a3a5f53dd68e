"""The table of operators: each layer kind's token grammar, latency-table key and analytic costs.

Parser, cost counter, latency tables and search read this module; `nn/modules.py` maps each kind
to its PyTorch module (the only other place a kind appears). Adding an op therefore touches:
1. here: its token in `parse_op`, and its branch in `LayerSpec.key`, `.macs` and `.params`;
2. `nn/modules.py`: its module class, registered in `LAYER_MODULES`;
3. a test that the analytic MACs/params equal torch's counters (tests/nn/test_builder.py does so
   for every kind a space uses).
Token grammar: ``k{kernel}e{expansion}`` (an MBConv with squeeze-excite and swish) or ``skip``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dna_deploy.errors import ArchError

_MBCONV = re.compile(r"^k(\d+)e(\d+)$")


@dataclass(frozen=True, order=True)
class Op:
    """One candidate choice of a layer: an MBConv (kernel, expansion) or identity."""

    kind: str  # "mbconv" | "skip"
    kernel: int = 0
    expand: int = 0

    def __str__(self) -> str:
        return "skip" if self.kind == "skip" else f"k{self.kernel}e{self.expand}"

    @property
    def is_skip(self) -> bool:
        return self.kind == "skip"


SKIP = Op("skip")

# Activation name in spaces and keys -> the torch.nn class that implements it (read by nn/modules.py).
ACTIVATIONS = {"swish": "SiLU", "relu": "ReLU", "relu6": "ReLU6", "hswish": "Hardswish"}


def parse_op(token: str, *, allowed: tuple[str, ...] | None = None, where: str = "") -> Op:
    """Token -> Op; with `allowed`, the token must be one of those (the error names the choices)."""
    token = token.strip()
    where_txt = f" at {where}" if where else ""
    if allowed is not None and token not in allowed:
        raise ArchError(f"op {token!r}{where_txt} is not allowed; choices there: {', '.join(allowed)}")
    if token == "skip":
        return SKIP
    m = _MBCONV.match(token)
    if not m:
        raise ArchError(f"unknown op {token!r}{where_txt}; ops are written 'k<kernel>e<expansion>' (e.g. k5e6) or 'skip'")
    kernel, expand = int(m.group(1)), int(m.group(2))
    if kernel % 2 == 0 or kernel < 1 or expand < 1:
        raise ArchError(f"op {token!r}{where_txt}: kernel must be odd and expansion >= 1")
    return Op("mbconv", kernel, expand)


def _hw_out(hw: int, stride: int) -> int:
    return (hw - 1) // stride + 1


@dataclass(frozen=True)
class LayerSpec:
    """A concrete layer of a concrete network: what the builder, cost counters and LUT share.

    kind: "conv" (stem: conv + BN + act), "mbconv", "skip", or "head" (1x1 conv + BN + act +
    global average pool + linear classifier; out_ch is the classifier width).
    """

    kind: str
    in_ch: int
    out_ch: int
    in_hw: int
    stride: int = 1
    kernel: int = 0
    expand: int = 0
    se_ratio: float = 0.0
    act: str = "swish"
    mid_ch: int = 0  # head: channels of the 1x1 conv before pooling

    @property
    def out_hw(self) -> int:
        if self.kind == "head":
            return 1
        return _hw_out(self.in_hw, self.stride)

    @property
    def op(self) -> Op:
        return Op("mbconv", self.kernel, self.expand) if self.kind == "mbconv" else Op(self.kind)

    # ---- the latency-table key: readable, and everything that changes latency is in it ----
    @property
    def key(self) -> str | None:
        h, ho = self.in_hw, self.out_hw
        if self.kind == "skip":
            return None  # identity: costs nothing once the graph is built
        if self.kind == "conv":
            return f"conv-in:{h}x{h}x{self.in_ch}-out:{ho}x{ho}x{self.out_ch}-k{self.kernel}-s{self.stride}-{self.act}"
        if self.kind == "mbconv":
            return (f"mbconv-in:{h}x{h}x{self.in_ch}-out:{ho}x{ho}x{self.out_ch}"
                    f"-k{self.kernel}-e{self.expand}-s{self.stride}-se{self.se_ratio:g}-{self.act}")
        if self.kind == "head":
            return f"head-in:{h}x{h}x{self.in_ch}-conv:{self.mid_ch}-out:{self.out_ch}-{self.act}"
        raise ValueError(self.kind)

    # ---- analytic costs: convs and linear layers only, as torch's flop counter counts them ----
    @property
    def se_ch(self) -> int:
        return max(1, int(self.in_ch * self.se_ratio)) if self.se_ratio > 0 else 0

    @property
    def expanded_ch(self) -> int:
        return self.in_ch * self.expand

    @property
    def macs(self) -> int:
        h, ho = self.in_hw, self.out_hw
        if self.kind == "skip":
            return 0
        if self.kind == "conv":
            return ho * ho * self.in_ch * self.out_ch * self.kernel * self.kernel
        if self.kind == "head":
            return h * h * self.in_ch * self.mid_ch + self.mid_ch * self.out_ch
        mid = self.expanded_ch
        m = 0
        if self.expand != 1:
            m += h * h * self.in_ch * mid
        m += ho * ho * mid * self.kernel * self.kernel
        if self.se_ch:
            m += 2 * mid * self.se_ch
        m += ho * ho * mid * self.out_ch
        return m

    @property
    def params(self) -> int:
        if self.kind == "skip":
            return 0
        if self.kind == "conv":
            return self.in_ch * self.out_ch * self.kernel ** 2 + 2 * self.out_ch
        if self.kind == "head":
            return self.in_ch * self.mid_ch + 2 * self.mid_ch + self.mid_ch * self.out_ch + self.out_ch
        mid = self.expanded_ch
        p = 0
        if self.expand != 1:
            p += self.in_ch * mid + 2 * mid
        p += mid * self.kernel ** 2 + 2 * mid
        if self.se_ch:
            p += mid * self.se_ch + self.se_ch + self.se_ch * mid + mid
        p += mid * self.out_ch + 2 * self.out_ch
        return p
