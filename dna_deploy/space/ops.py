"""The table of operators: each layer kind's token grammar, latency-table key and analytic costs.

Parser, cost counter, latency tables and search read this module; `nn/modules.py` maps each kind
to its PyTorch module (the only other place a kind appears). Adding an op therefore touches:
1. here: its token in `parse_op`, and its branch in `LayerSpec.key`, `.macs` and `.params`;
2. `nn/modules.py`: its module class, registered in `LAYER_MODULES`;
3. a test that the analytic MACs/params equal torch's counters (tests/nn/test_builder.py does so
   for every kind a space uses).
Token grammar: ``k{kernel}e{expansion}`` (an MBConv with squeeze-excite and swish),
``r{mlp_ratio}h{heads}`` (a pre-norm transformer layer: multi-head attention, then a GELU MLP) or
``skip``.

Transformer layers take and give the same NCHW grid as convolutions (tokens are the grid's pixels):
the block outputs that DNA taps, the teacher features, the adapters and the per-layer latency models
then have one shape contract for both families. Inside, attention keeps every tensor at rank 4 or
less (q, k, v are split before the head reshape), and GELU is the tanh form, so the ONNX lowers to
builtin LiteRT ops; the exact erf form needs TensorFlow's Flex delegate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dna_deploy.errors import ArchError

_MBCONV = re.compile(r"^k(\d+)e(\d+)$")
_VIT = re.compile(r"^r(\d+)h(\d+)$")


@dataclass(frozen=True, order=True)
class Op:
    """One candidate choice of a layer: an MBConv (kernel, expansion), a transformer layer
    (MLP ratio in `expand`, attention heads) or identity."""

    kind: str  # "mbconv" | "vit" | "skip"
    kernel: int = 0
    expand: int = 0
    heads: int = 0

    def __str__(self) -> str:
        if self.kind not in ("mbconv", "vit"):
            return self.kind
        if self.kind == "vit":
            return f"r{self.expand}h{self.heads}"
        return f"k{self.kernel}e{self.expand}"

    @property
    def size(self) -> tuple[int, int]:
        """Order by capacity: widest first, then the larger kernel or more heads (largest/smallest arch)."""
        return (self.expand, self.kernel or self.heads)

    @property
    def is_skip(self) -> bool:
        return self.kind == "skip"


SKIP = Op("skip")

# Activation name in spaces and keys -> the torch.nn class that implements it (read by nn/modules.py).
ACTIVATIONS = {"swish": "SiLU", "relu": "ReLU", "relu6": "ReLU6", "hswish": "Hardswish"}
# Transformer spaces use GELU (tanh form; see above) and nothing else.
VIT_ACTIVATION = "gelu"


def parse_op(token: str, *, allowed: tuple[str, ...] | None = None, where: str = "") -> Op:
    """Token -> Op; with `allowed`, the token must be one of those (the error names the choices)."""
    token = token.strip()
    where_txt = f" at {where}" if where else ""
    if allowed is not None and token not in allowed:
        raise ArchError(f"op {token!r}{where_txt} is not allowed; choices there: {', '.join(allowed)}")
    if token == "skip":
        return SKIP
    m = _VIT.match(token)
    if m:
        ratio, heads = int(m.group(1)), int(m.group(2))
        if ratio < 1 or heads < 1:
            raise ArchError(f"op {token!r}{where_txt}: MLP ratio and heads must be >= 1")
        return Op("vit", expand=ratio, heads=heads)
    m = _MBCONV.match(token)
    if not m:
        raise ArchError(f"unknown op {token!r}{where_txt}; ops are written 'k<kernel>e<expansion>' (e.g. k5e6), "
                        "'r<mlp ratio>h<heads>' (e.g. r4h6) or 'skip'")
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
    Transformer kinds: "patch" (a kernel = stride = patch-size conv plus a learned position
    embedding), "vit" (a stride x stride conv merging patches when the stride is 2 or the width
    changes, then attention with `heads` and an MLP of ratio `expand`), and "vithead" (mean over
    tokens, LayerNorm, linear classifier).
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
    heads: int = 0  # vit: attention heads

    @property
    def merges(self) -> bool:
        """A vit layer that starts with a patch-merging (stride 2) or width-changing (1x1) conv."""
        return self.kind == "vit" and (self.stride != 1 or self.in_ch != self.out_ch)

    @property
    def out_hw(self) -> int:
        if self.kind in ("head", "vithead"):
            return 1
        return _hw_out(self.in_hw, self.stride)

    @property
    def op(self) -> Op:
        if self.kind == "mbconv":
            return Op("mbconv", self.kernel, self.expand)
        if self.kind == "vit":
            return Op("vit", expand=self.expand, heads=self.heads)
        return Op(self.kind)

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
        if self.kind == "patch":
            return f"patch-in:{h}x{h}x{self.in_ch}-out:{ho}x{ho}x{self.out_ch}-p{self.kernel}"
        if self.kind == "vit":  # tokens and width in and out, heads, MLP ratio
            return (f"vit-in:{h}x{h}x{self.in_ch}-out:{ho}x{ho}x{self.out_ch}"
                    f"-h{self.heads}-r{self.expand}-s{self.stride}-{self.act}")
        if self.kind == "vithead":
            return f"vithead-in:{h}x{h}x{self.in_ch}-out:{self.out_ch}"
        raise ValueError(self.kind)

    # ---- analytic costs: convs, linear layers and attention's two matmuls, as torch's flop counter
    # counts them (normalisations, activations, softmax and additions are not counted) ----
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
        if self.kind == "patch":
            return ho * ho * self.in_ch * self.out_ch * self.kernel * self.kernel
        if self.kind == "vithead":
            return self.in_ch * self.out_ch
        if self.kind == "vit":
            tokens, width = ho * ho, self.out_ch
            merge = tokens * self.in_ch * width * self.stride ** 2 if self.merges else 0
            qkv_proj = 4 * tokens * width * width
            attention = 2 * tokens * tokens * width  # q @ k^T and weights @ v, summed over heads
            mlp = 2 * tokens * width * width * self.expand
            return merge + qkv_proj + attention + mlp
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
        if self.kind == "patch":  # conv with bias, position embedding over the output grid
            return self.in_ch * self.out_ch * self.kernel ** 2 + self.out_ch + self.out_hw ** 2 * self.out_ch
        if self.kind == "vithead":
            return 2 * self.in_ch + self.in_ch * self.out_ch + self.out_ch
        if self.kind == "vit":
            width, hidden = self.out_ch, self.out_ch * self.expand
            merge = self.in_ch * width * self.stride ** 2 + width if self.merges else 0
            norms = 2 * 2 * width
            qkv_proj = 4 * (width * width + width)
            mlp = width * hidden + hidden + hidden * width + width
            return merge + norms + qkv_proj + mlp
        mid = self.expanded_ch
        p = 0
        if self.expand != 1:
            p += self.in_ch * mid + 2 * mid
        p += mid * self.kernel ** 2 + 2 * mid
        if self.se_ch:
            p += mid * self.se_ch + self.se_ch + self.se_ch * mid + mid
        p += mid * self.out_ch + 2 * self.out_ch
        return p
