"""Transformer pieces of the Roformers: RMSNorm, rotary positions, gated softmax attention, XCiT linear attention.

Module and parameter names follow the classic checkpoint layout (see the README's "Checkpoint layout"), so that
`state_dict()` keys equal those of the published weights.
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def indexed(index: int, module: nn.Module) -> nn.Sequential:
    """A Sequential holding one module under a given index, to keep a classic key such as `to_out.1.weight`."""
    return nn.Sequential(OrderedDict([(str(index), module)]))


class RMSNorm(nn.Module):
    """`normalize(x) * sqrt(dim) * gamma`, the Roformers' norm (an L2 normalisation, not torch's eps-based RMSNorm)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * (self.gamma * self.scale)


class RotaryEmbedding(nn.Module):
    """Rotary positions over interleaved pairs of the head dimension (theta 10000), shared by all layers of an axis.

    `freqs` is a frozen Parameter only because checkpoints store it under every attention layer. Angles are always
    computed in float32 from integer positions (the classic code builds positions in the query's dtype, so under bf16
    positions above 256 round), and the rotation tables are cached per length and device.
    """

    def __init__(self, dim_head: int, theta: float = 10000.0):
        super().__init__()
        exponents = torch.arange(0, dim_head, 2)[: dim_head // 2].float() / dim_head
        self.freqs = nn.Parameter(1.0 / theta**exponents, requires_grad=False)
        self._cache: dict = {}

    def rotation(self, length: int, device: torch.device) -> torch.Tensor:
        """Unit complex numbers e^{i * position * freq}, shape (length, dim_head / 2), complex64."""
        if torch.compiler.is_compiling():  # the compiled graph computes (and fuses) the table itself
            return self._table(length, device)
        key = (length, device, self.freqs.data_ptr(), self.freqs._version)  # a loaded checkpoint invalidates it
        if key not in self._cache:
            with torch.inference_mode(False):  # made in inference mode, a cached table could not serve training
                self._cache[key] = self._table(length, device)
        return self._cache[key]

    def _table(self, length: int, device: torch.device) -> torch.Tensor:
        positions = torch.arange(length, device=device, dtype=torch.float32)
        angles = positions[:, None] * self.freqs.detach().to(device=device, dtype=torch.float32)[None, :]
        return torch.polar(torch.ones_like(angles), angles)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate queries or keys (batch, seq, heads, dim_head), computed in float32, returned in x's dtype.

        Without autograd a float32 `x` is rotated in place (callers pass a fresh projection): one pass over memory,
        no temporary. With autograd the product is out of place, whose backward is one multiply (the in-place
        version's backward copies and zero-fills the views, ~10x slower)."""
        table = self.rotation(x.shape[1], x.device)[:, None]
        rotated = x.float()
        pairs = torch.view_as_complex(rotated.unflatten(-1, (-1, 2)))
        if torch.is_grad_enabled() and x.requires_grad:
            return torch.view_as_real(pairs * table).flatten(-2).to(x.dtype)
        pairs.mul_(table)
        return rotated.to(x.dtype)


class Attention(nn.Module):
    """Pre-norm softmax attention with rotary positions and a per-head sigmoid output gate.

    With `value_residual`, the values of this layer are mixed with `first_values` (those of the first layer of the
    same axis) through a learned per-head, per-token gate: `v + mix * (first - v)` (value-residual learning).
    """

    def __init__(self, dim, heads, dim_head, dropout, rotary_embed, flash, value_residual=False):
        super().__init__()
        self.heads, self.dim_head, self.dropout, self.flash = heads, dim_head, dropout, flash
        self.rotary_embed = rotary_embed
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_gates = nn.Linear(dim, heads)
        self.to_value_residual_mix = nn.Linear(dim, heads) if value_residual else None
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim, bias=False), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, first_values: torch.Tensor | None = None):
        """x: (batch, seq, dim). Returns (output, values) with values as (batch, heads, seq, dim_head)."""
        batch, seq, _ = x.shape
        x = self.norm(x)
        if torch.is_autocast_enabled(x.device.type):  # cast once, not in each of the four products below
            x = x.to(torch.get_autocast_dtype(x.device.type))
        # q, k, v from three products on row blocks of `to_qkv`, one at a time to keep few large tensors alive:
        # each comes out (batch, seq, heads, dim_head) contiguous, which needs no copy to become the
        # (batch, heads, seq, dim_head) view attention takes (the CPU flash kernel runs as fast on it)
        q_weight, k_weight, v_weight = self.to_qkv.weight.chunk(3)
        q = self.rotary_embed.rotate(F.linear(x, q_weight).view(batch, seq, self.heads, self.dim_head))
        k = self.rotary_embed.rotate(F.linear(x, k_weight).view(batch, seq, self.heads, self.dim_head))
        v = F.linear(x, v_weight).view(batch, seq, self.heads, self.dim_head)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.to_value_residual_mix is not None and first_values is not None:
            mix = torch.sigmoid(self.to_value_residual_mix(x)).transpose(1, 2).unsqueeze(-1)
            v = v + mix * (first_values - v)

        dropout = self.dropout if self.training else 0.0
        if self.flash:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:
            weights = torch.softmax((q @ k.transpose(-1, -2)) * self.dim_head**-0.5, dim=-1)
            out = F.dropout(weights, dropout, self.training) @ v
        del q, k
        # gate in (batch, seq, heads, dim_head) order: the CPU flash kernel returns that memory layout
        gates = torch.sigmoid(self.to_gates(x)).unsqueeze(-1)
        out = out.transpose(1, 2)
        out = (out * gates if out.requires_grad else out.mul_(gates)).reshape(batch, seq, self.heads * self.dim_head)
        return self.to_out(out), v


class LinearAttention(nn.Module):
    """XCiT cross-covariance attention: softmax over the (dim_head x dim_head) covariance of L2-normalised q and k
    along the token axis, q scaled by exp(temperature), fixed scale 8. No rotary positions, no gate."""

    scale = 8.0

    def __init__(self, dim, heads, dim_head, dropout):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.temperature = nn.Parameter(torch.zeros(heads, 1, 1))
        self.norm = RMSNorm(dim)
        self.to_qkv = indexed(0, nn.Linear(dim, 3 * heads * dim_head, bias=False))
        self.to_out = indexed(1, nn.Linear(heads * dim_head, dim, bias=False))
        self.attn_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, first_values=None):
        batch, seq, _ = x.shape
        qkv = self.to_qkv(self.norm(x)).view(batch, seq, 3, self.heads, self.dim_head).permute(2, 0, 3, 4, 1)
        q, k, v = qkv.unbind(0)  # (batch, heads, dim_head, seq)
        q = F.normalize(q, dim=-1) * self.temperature.exp()
        k = F.normalize(k, dim=-1)
        weights = self.attn_dropout(torch.softmax((q @ k.transpose(-1, -2)) * self.scale, dim=-1))
        out = (weights @ v).permute(0, 3, 1, 2).reshape(batch, seq, self.heads * self.dim_head)
        return self.to_out(out), None


class FeedForward(nn.Module):
    def __init__(self, dim, mult, dropout):
        super().__init__()
        inner = int(dim * mult)
        self.net = nn.Sequential(
            RMSNorm(dim), nn.Linear(dim, inner), nn.GELU(), nn.Dropout(dropout), nn.Linear(inner, dim), nn.Dropout(dropout)
        )

    def forward(self, x):
        return self.net(x)


class Transformer(nn.Module):
    """`depth` pre-norm residual (attention, feed-forward) pairs over sequences (batch, seq, dim).

    `norm_output` adds the final RMSNorm that Mel-Band transformers have (BS-RoFormer has a single `final_norm`).
    `forward` returns (x, values of the first attention layer) so an axis can share them for value residuals; the
    transformer that `holds_first_values` (the first of its axis) has no mixing gate on its first layer.
    """

    def __init__(
        self, dim, depth, heads, dim_head, attn_dropout, ff_dropout, ff_mult=4, norm_output=False,
        rotary_embed=None, flash_attn=True, linear_attn=False, value_residual=False, holds_first_values=False,
        grad_checkpoint=False,
    ):
        super().__init__()
        self.grad_checkpoint = grad_checkpoint
        self.value_residual = value_residual
        layers = []
        for index in range(depth):
            if linear_attn:
                attention = LinearAttention(dim, heads, dim_head, attn_dropout)
            else:
                attention = Attention(
                    dim, heads, dim_head, attn_dropout, rotary_embed, flash_attn,
                    value_residual=value_residual and not (holds_first_values and index == 0),
                )
            layers.append(nn.ModuleList([attention, FeedForward(dim, ff_mult, ff_dropout)]))
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(dim) if norm_output else None

    def _forward(self, x, first_values):
        for attention, feed_forward in self.layers:
            out, values = attention(x, first_values)
            if first_values is None and self.value_residual:  # else nobody needs them: let them go
                first_values = values
            x = x + out
            x = x + feed_forward(x)
        return (self.norm(x) if self.norm is not None else x), first_values

    def forward(self, x, first_values=None):
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, first_values, use_reentrant=False)
        return self._forward(x, first_values)
