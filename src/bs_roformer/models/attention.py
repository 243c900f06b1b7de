"""Transformer pieces of the Roformers: RMSNorm, rotary or polar positions, gated softmax attention, XCiT linear
attention.

Module and parameter names follow the classic checkpoint layout (the README's "Exactness"), so that `state_dict()`
keys equal those of the published weights. The measurements behind the fast paths are in docs/performance.md.
"""

from collections import OrderedDict
from contextlib import nullcontext

import math

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

    def rotate(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rotate queries or keys (batch, seq, heads, dim_head), computed in float32, returned in `dtype` (default
        x's dtype).

        With autograd the product is out of place, whose backward is one multiply (an in-place product's backward
        copies and zero-fills the views, far slower). Without, `x` (a fresh projection) is rotated in place.
        Under `torch.export` (the ONNX export), in real arithmetic: ONNX has no complex tensors."""
        if torch.compiler.is_exporting():
            return self.rotate_real(x).to(dtype or x.dtype)
        if torch.is_grad_enabled() and x.requires_grad:
            table = self.rotation(x.shape[1], x.device)[:, None]
            pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
            return torch.view_as_real(pairs * table).flatten(-2).to(dtype or x.dtype)
        return self.rotate_(x).to(dtype or x.dtype)

    def rotate_real(self, x: torch.Tensor) -> torch.Tensor:
        """The rotation of `rotate` as float32 cos/sin products on the (even, odd) pairs of the head dimension."""
        positions = torch.arange(x.shape[1], device=x.device, dtype=torch.float32)
        angles = positions[:, None] * self.freqs.detach().to(device=x.device, dtype=torch.float32)[None, :]
        cos, sin = angles.cos()[:, None], angles.sin()[:, None]  # (seq, 1, dim_head / 2)
        even, odd = x.float().unflatten(-1, (-1, 2)).unbind(-1)
        return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)

    def rotate_(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rotate (batch, seq, heads, dim_head) without autograd into `out` (any strides; default x itself): float32
        in one pass, other dtypes through a float32 copy."""
        out = x if out is None else out
        table = self.rotation(x.shape[1], x.device)[:, None]
        pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
        if out.dtype == torch.float32:
            torch.mul(pairs, table, out=torch.view_as_complex(out.unflatten(-1, (-1, 2))))
        else:
            out.copy_(torch.view_as_real(pairs.mul_(table)).flatten(-2))
        return out


class PolarEmbedding(nn.Module):
    """PoPE, polar positional embedding (MSST's `use_pope`), shared by all layers of an axis like the rotary module.

    Queries and keys become magnitudes `softplus(q)`, `softplus(k)` with one phase per feature: position * inv_freq
    for the query, the same plus a learned per-head phase `bias` (clamped to [-2 pi, 0]) for the key. The score of
    query i and key j is sum_d softplus(q_id) softplus(k_jd) cos(phase_d(i - j) - bias_hd), scaled by dim_head^-0.5.
    Unlike rotary positions, every one of the dim_head features gets its own frequency theta^(-d / dim_head).
    Parameter names (`bias`, buffer `inv_freqs`) are those of MSST's checkpoints.
    """

    def __init__(self, dim_head: int, heads: int, theta: float = 10000.0):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(heads, dim_head))
        self.register_buffer("inv_freqs", theta ** -(torch.arange(dim_head).float() / dim_head))

    def polar_queries_and_keys(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k (batch, seq, heads, dim_head) -> Cartesian forms (batch, heads, seq, 2 * dim_head) in float32, whose
        dot products are the polar scores."""
        positions = torch.arange(q.shape[1], device=q.device, dtype=torch.float32)
        phases = (positions[:, None] * self.inv_freqs.float()[None, :])[:, None, :]  # (seq, 1, dim_head)
        key_phases = phases + self.bias.float().clamp(-2 * math.pi, 0.0)  # (seq, heads, dim_head)
        q_magnitude, k_magnitude = F.softplus(q.float()), F.softplus(k.float())
        q_polar = torch.cat([q_magnitude * phases.cos(), q_magnitude * phases.sin()], dim=-1)
        k_polar = torch.cat([k_magnitude * key_phases.cos(), k_magnitude * key_phases.sin()], dim=-1)
        return q_polar.transpose(1, 2), k_polar.transpose(1, 2)


class Attention(nn.Module):
    """Pre-norm softmax attention with rotary positions and a per-head sigmoid output gate.

    With `value_residual`, the values of this layer are mixed with `first_values` (those of the first layer of the
    same axis) through a learned per-head, per-token gate: `v + mix * (first - v)` (value-residual learning).
    With `pope_embed` (a PolarEmbedding) instead of `rotary_embed`, positions are polar (see PolarEmbedding).
    """

    def __init__(self, dim, heads, dim_head, dropout, rotary_embed, flash, value_residual=False, pope_embed=None):
        super().__init__()
        self.heads, self.dim_head, self.dropout, self.flash = heads, dim_head, dropout, flash
        self.rotary_embed = rotary_embed if pope_embed is None else None
        self.pope_embed = pope_embed
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_value_residual_mix = nn.Linear(dim, heads) if value_residual else None
        self.to_gates = nn.Linear(dim, heads)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim, bias=False), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, first_values: torch.Tensor | None = None):
        """x: (batch, seq, dim). Returns (output, values) with values as (batch, heads, seq, dim_head)."""
        batch, seq, _ = x.shape
        x = self.norm(x)
        if self.pope_embed is not None:
            return self._forward_polar(x, first_values)
        if torch.is_autocast_enabled(x.device.type):  # cast once, not in each of the four products below
            x = x.to(torch.get_autocast_dtype(x.device.type))
        # Training on the CPU attends in float32 under bf16 autocast: torch's CPU flash-attention backward is slower
        # in bf16 than in float32 (torch 2.13).
        cpu_training = x.device.type == "cpu" and torch.is_grad_enabled()
        dtype = torch.float32 if cpu_training and x.dtype == torch.bfloat16 else x.dtype
        # q, k, v from three products on row blocks of `to_qkv`, one at a time to keep few large tensors alive
        q_weight, k_weight, v_weight = self.to_qkv.weight.chunk(3)
        q = self.rotary_embed.rotate(F.linear(x, q_weight).view(batch, seq, self.heads, self.dim_head), dtype)
        k = self.rotary_embed.rotate(F.linear(x, k_weight).view(batch, seq, self.heads, self.dim_head), dtype)
        v = F.linear(x, v_weight).view(batch, seq, self.heads, self.dim_head).to(dtype)
        if self.to_value_residual_mix is not None and first_values is not None:
            v = v + self._value_mix(x) * (first_values.transpose(1, 2) - v)
        v = v.transpose(1, 2)
        with torch.autocast("cpu", enabled=False) if dtype != x.dtype else nullcontext():  # else it casts back
            out = self.attend(q.transpose(1, 2), k.transpose(1, 2), v)
        del q, k
        return self.gated_output(out, torch.sigmoid(self.to_gates(x)).unsqueeze(-1)), v

    def _forward_polar(self, x: torch.Tensor, first_values: torch.Tensor | None):
        """`forward` with polar positions on the normed x. Scores are computed in float32 (as PoPE-pytorch does).
        compat: MSST's PoPE attention applies no attention dropout, whatever `attn_dropout` says."""
        batch, seq, _ = x.shape
        q, k, v = F.linear(x, self.to_qkv.weight).view(batch, seq, 3, self.heads, self.dim_head).unbind(2)
        if self.to_value_residual_mix is not None and first_values is not None:
            v = v + self._value_mix(x) * (first_values.transpose(1, 2) - v)
        q_polar, k_polar = self.pope_embed.polar_queries_and_keys(q, k)
        v = v.transpose(1, 2)
        out = F.scaled_dot_product_attention(q_polar, k_polar, v.to(q_polar.dtype), scale=self.dim_head**-0.5)
        return self.gated_output(out.to(v.dtype), torch.sigmoid(self.to_gates(x)).unsqueeze(-1)), v

    def project_(self, x: torch.Tensor, q, k, v, gates, first_values=None):
        """Inference on a block of sequences x: write its rotated queries and keys and its values into the
        (batch, heads, seq, dim_head) buffers q, k, v, and its gates into (batch, seq, heads, 1) `gates`; the
        buffers' dtype is the one to compute in. Each projection is made in a block-sized (cached) temporary, and
        its rotation or copy turns it into the layout on which the CPU flash kernel runs fastest (faster than on
        the transposed views that `forward` passes)."""
        x = self.norm(x).to(q.dtype)
        batch, seq, dim = x.shape
        rows = x.view(-1, dim)
        q_weight, k_weight, v_weight = self.to_qkv.weight.to(q.dtype).chunk(3)
        for buffer, weight in ((q, q_weight), (k, k_weight)):
            projected = torch.mm(rows, weight.t()).view(batch, seq, self.heads, -1)
            self.rotary_embed.rotate_(projected, out=buffer.transpose(1, 2))
        v.transpose(1, 2).copy_(torch.mm(rows, v_weight.t()).view(batch, seq, self.heads, -1))
        if self.to_value_residual_mix is not None and first_values is not None:
            v.add_(self._value_mix(x).transpose(1, 2) * (first_values - v))
        gates.copy_(torch.sigmoid(self.to_gates(x)).unsqueeze(-1))

    def _value_mix(self, x):
        return torch.sigmoid(self.to_value_residual_mix(x)).unsqueeze(-1)

    def attend(self, q, k, v, mask=None):
        """Softmax attention over (batch, heads, seq, dim_head); `mask` (seq, seq), if given, is True where a query
        may attend to a key."""
        dropout = self.dropout if self.training else 0.0
        if self.flash:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        scores = (q @ k.transpose(-1, -2)) * self.dim_head**-0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return F.dropout(torch.softmax(scores, dim=-1), dropout, self.training) @ v

    def gated_output(self, out, gates):
        """The output projection of the heads `out` (batch, heads, seq, dim_head) gated by `gates` (batch, seq,
        heads, 1). The product comes out in the gates' memory layout, rows of (heads, dim_head) as the projection
        takes them, whatever the layout of `out`."""
        return self.to_out((gates * out.transpose(1, 2)).flatten(-2))


class LinearAttention(nn.Module):
    """XCiT cross-covariance attention: softmax over the (dim_head x dim_head) covariance of L2-normalised q and k
    along the token axis, q scaled by exp(temperature), fixed scale 8. No rotary positions, no gate."""

    scale = 8.0

    def __init__(self, dim, heads, dim_head, dropout):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))  # as MSST initialises it
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


# Tokens per block in CPU inference (`Transformer._forward_in_blocks`): a block's (tokens, heads x dim_head)
# intermediates stay in the CPU's cache (4096 tokens of 512 float32 features are 8 MB).
BLOCK_TOKENS = 4096

# CPU inference pads sequences of these lengths to 64 tokens, the padding keys masked out: torch's CPU flash kernel
# (2.13) runs 56 to 63 tokens (the band axis of the published models has 60 or 62) slower than 64; other lengths
# gain little or lose.
PADDED_TO_64 = range(56, 64)


class Transformer(nn.Module):
    """`depth` pre-norm residual (attention, feed-forward) pairs over sequences (batch, seq, dim).

    `norm_output` adds the final RMSNorm that Mel-Band transformers have (BS-RoFormer has a single `final_norm`).
    `forward` returns (x, values of the first attention layer) so an axis can share them for value residuals; the
    transformer that `holds_first_values` (the first of its axis) has no mixing gate on its first layer.
    """

    def __init__(
        self, dim, depth, heads, dim_head, attn_dropout, ff_dropout, ff_mult=4, norm_output=False,
        rotary_embed=None, flash_attn=True, linear_attn=False, value_residual=False, holds_first_values=False,
        grad_checkpoint=False, pope_embed=None,
    ):
        super().__init__()
        self.grad_checkpoint = grad_checkpoint
        self.value_residual = value_residual
        # CPU inference runs in blocks for rotary softmax attention; polar attention runs `_forward` (plain path)
        self.in_blocks = not linear_attn and pope_embed is None
        layers = []
        for index in range(depth):
            if linear_attn:
                attention = LinearAttention(dim, heads, dim_head, attn_dropout)
            else:
                attention = Attention(
                    dim, heads, dim_head, attn_dropout, rotary_embed, flash_attn,
                    value_residual=value_residual and not (holds_first_values and index == 0), pope_embed=pope_embed,
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

    def _forward_in_blocks(self, x, first_values):
        """Inference on CPU, the same computation as `_forward`: everything but attention itself runs on blocks of
        whole sequences of about BLOCK_TOKENS tokens, whose (tokens, heads * dim_head) intermediates stay in cache
        (whole-tensor passes over them are memory-bound here), and the projections write q, k and v straight into
        the layout attention runs fastest on."""
        batch, seq, dim = x.shape
        step = max(1, BLOCK_TOKENS // seq)
        blocks = [slice(start, start + step) for start in range(0, batch, step)]
        autocast = torch.is_autocast_enabled(x.device.type)
        dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
        padded = 64 if seq in PADDED_TO_64 else seq
        mask = (torch.arange(padded, device=x.device) < seq).expand(padded, padded) if padded > seq else None
        x = x.clone(memory_format=torch.contiguous_format)  # updated in place below
        for attention, feed_forward in self.layers:
            buffers = [x.new_empty(batch, attention.heads, padded, attention.dim_head, dtype=dtype) for _ in range(3)]
            for buffer in buffers:  # the padding must be finite: masked scores of NaN keys would still be NaN
                buffer[:, :, seq:].zero_()
            q, k, v = (buffer[:, :, :seq] for buffer in buffers)
            gates = x.new_empty(batch, seq, attention.heads, 1, dtype=dtype)
            for block in blocks:
                attention.project_(x[block], q[block], k[block], v[block], gates[block],
                                   None if first_values is None else first_values[block])
            out = attention.attend(*buffers, mask)[:, :, :seq]
            del q, k, buffers
            for block in blocks:
                x_block = x[block]
                x_block += attention.gated_output(out[block], gates[block])
                x_block += feed_forward(x_block)
            if first_values is None and self.value_residual:
                first_values = v
        return (self.norm(x) if self.norm is not None else x), first_values

    def forward(self, x, first_values=None):
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, first_values, use_reentrant=False)
        if self.in_blocks and not torch.is_grad_enabled() and x.device.type == "cpu" and not torch.compiler.is_compiling():
            return self._forward_in_blocks(x, first_values)
        return self._forward(x, first_values)
