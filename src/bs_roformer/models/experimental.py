"""MSST's experimental Roformers (`bs_roformer_experimental`, `mel_band_roformer_experimental`; MSST's main classes
from 2025-02 to 2025-03): value residuals across blocks and hyper-connections (several residual streams).

Their numerics are MSST's, quirks included (each marked "compat:"), so that checkpoints from that window load and
run as they were trained. They run the plain transformer path (`ExperimentalTransformer`), not the blocked CPU one.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import Attention, FeedForward, RMSNorm
from .bs_roformer import BSRoformer
from .mel_band_roformer import MelBandRoformer


class HyperConnection(nn.Module):
    """Hyper-connections (Zhu et al. 2024, arXiv:2409.19606) around one branch, as the `hyper-connections` package
    builds them (tanh, one input view, no fractions); parameter names are its checkpoint keys.

    The residual x holds S streams as (batch * S, ..., dim), stream index innermost. With r_s the streams and
    n_s = RMSNorm'(r_s) (gain `1 + norm.gamma`):
      alpha[s, t] = static_alpha[s, t] + dynamic_alpha_scale * tanh(n_s . dynamic_alpha_fn[:, t])   t = 0..S
      beta[s]     = static_beta[s] + dynamic_beta_scale * tanh(n_s . dynamic_beta_fn)
      branch input  h = sum_s alpha[s, 0] r_s;  output stream t: beta[t] * branch(h) + sum_s alpha[s, 1 + t] r_s.
    """

    def __init__(self, num_streams: int, dim: int, branch: nn.Module):
        super().__init__()
        self.num_streams = num_streams
        # values of a fresh package module, whose alpha picks a random input stream; loading replaces them
        self.static_alpha = nn.Parameter(torch.cat([torch.eye(num_streams)[:, :1], torch.eye(num_streams)], dim=1))
        self.dynamic_alpha_fn = nn.Parameter(torch.zeros(dim, num_streams + 1))
        self.dynamic_alpha_scale = nn.Parameter(torch.tensor(1e-2))
        self.static_beta = nn.Parameter(torch.ones(num_streams))
        self.dynamic_beta_fn = nn.Parameter(torch.zeros(dim))
        self.dynamic_beta_scale = nn.Parameter(torch.tensor(1e-2))
        self.branch = branch
        self.norm = RMSNorm(dim)

    def forward(self, x: torch.Tensor, *branch_args):
        """x (batch * S, seq, dim) -> the new streams, or (streams, rest...) when the branch returns a tuple."""
        streams = x.unflatten(0, (-1, self.num_streams))  # (batch, S, seq, dim)
        # the package's norm scales by (gamma + 1), its gamma starting at zero
        normed = F.normalize(streams, dim=-1) * (self.norm.scale * (self.norm.gamma + 1))
        alpha = torch.tanh(normed @ self.dynamic_alpha_fn) * self.dynamic_alpha_scale + self.static_alpha[:, None]
        beta = torch.tanh(normed @ self.dynamic_beta_fn) * self.dynamic_beta_scale + self.static_beta[:, None]
        mixed = torch.einsum("bsnt,bsnd->btnd", alpha, streams)  # (batch, 1 + S, seq, dim)
        out = self.branch(mixed[:, 0], *branch_args)
        rest = ()
        if isinstance(out, tuple):
            out, *rest = out
        new_streams = (beta[..., None] * out[:, None] + mixed[:, 1:]).flatten(0, 1)
        return (new_streams, *rest) if rest else new_streams


class ExperimentalTransformer(nn.Module):
    """MSST's experimental transformer over sequences (batch, seq, dim), returning (x, first values).

    `forward(x, value_residual)`: `value_residual` None (the first block) is MSST's "compatibility" path: pre-norm
    residuals, `x = attn(x) + x` and `x = ff(x) + x`. Given values (every later block), each layer is applied as
    `x = attn(x, values)`, `x = ff(x)`. compat: with one residual stream the branches are plain attention and
    feed-forward, so those later blocks have no residual connections at all; with hyper-connections the first
    block adds x on top of the hyper-connection's own residual streams. Both are MSST's behaviour.
    """

    def __init__(self, *, dim, depth, heads, dim_head, attn_dropout, ff_dropout, ff_mult=4, norm_output,
                 rotary_embed, flash_attn, value_residual, num_residual_streams, grad_checkpoint=False):
        super().__init__()
        self.grad_checkpoint = grad_checkpoint
        self.in_blocks = False  # the plain path only

        def wrapped(branch):
            return branch if num_residual_streams == 1 else HyperConnection(num_residual_streams, dim, branch)

        self.layers = nn.ModuleList(
            nn.ModuleList([
                wrapped(Attention(dim, heads, dim_head, attn_dropout, rotary_embed, flash_attn,
                                  value_residual=value_residual)),
                wrapped(FeedForward(dim, ff_mult, ff_dropout)),
            ])
            for _ in range(depth)
        )
        self.norm = RMSNorm(dim) if norm_output else None

    def _forward(self, x, value_residual):
        first_values = None
        for attention, feed_forward in self.layers:
            if value_residual is None:
                out, values = attention(x)
                x = out + x
                x = feed_forward(x) + x
            else:
                x, values = attention(x, value_residual)
                x = feed_forward(x)
            first_values = values if first_values is None else first_values
        x = self.norm(x) if self.norm is not None else x
        # the values of the first block's first layer serve every later block of the axis
        return x, first_values if value_residual is None else value_residual

    def forward(self, x, value_residual=None):
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, value_residual, use_reentrant=False)
        return self._forward(x, value_residual)


def _check_experimental_options(options: dict, linear_transformer_depth: int, num_residual_streams: int):
    for key in ("zero_dc", "use_pope", "add_value_residual"):
        if key in options:
            raise TypeError(f"unknown model option {key!r} for MSST's experimental classes, which have none")
    if linear_transformer_depth > 0:
        raise ValueError("linear_transformer_depth > 0 is not supported by the experimental model types (MSST's "
                         "experimental transformer fails on linear attention); use bs_roformer or mel_band_roformer")
    if num_residual_streams < 1:
        raise ValueError(f"num_residual_streams must be >= 1, got {num_residual_streams}")


class _Experimental:
    """What both experimental classes change in the shared Roformer: their transformers, and the residual streams
    expanded before the stack and summed after it. Options: the model's own, without `zero_dc` (never zeroed here)
    and `use_pope`, plus `use_value_residual_learning` and `num_residual_streams` (1: no hyper-connections)."""

    def __init__(self, dim: int, *, use_value_residual_learning: bool = False, num_residual_streams: int = 1,
                 linear_transformer_depth: int = 0, **options):
        _check_experimental_options(options, linear_transformer_depth, num_residual_streams)
        self.use_value_residual_learning = use_value_residual_learning
        self.num_residual_streams = num_residual_streams
        super().__init__(dim, zero_dc=False, **options)

    def _axis_transformer(self, block, depth, positions, common, add_value_residual):
        # MSST: blocks after the first mix values with the first block's, when use_value_residual_learning
        return ExperimentalTransformer(
            depth=depth, value_residual=self.use_value_residual_learning and block > 0,
            num_residual_streams=self.num_residual_streams, **positions, **common,
        )

    def _transform(self, x):
        streams = self.num_residual_streams
        if streams == 1:
            return super()._transform(x)
        # streams are expanded along the batch axis, stream index innermost, as the package's repeat does
        x = super()._transform(x.repeat_interleave(streams, dim=0))
        return x.unflatten(0, (-1, streams)).sum(dim=1)


class BSRoformerExperimental(_Experimental, BSRoformer):
    """MSST's `bs_roformer_experimental`: BSRoformer's options, changed as `_Experimental` says."""


class MelBandRoformerExperimental(_Experimental, MelBandRoformer):
    """MSST's `mel_band_roformer_experimental`: MelBandRoformer's options, changed as `_Experimental` says."""
