"""MSST's conformer types (`bs_conformer`, `mel_band_conformer`): the band-split frame of the Roformers with conformer
blocks (Gulati et al. 2020) on the time and band axes instead of transformer layers.

Key names and numerics are those of MSST's `BSConformer` and `MelBandConformer`. The blocks run the plain path.
"""

import torch
from torch import nn

from .attention import Attention, FeedForward, RMSNorm
from ..mel import slaney_mel_filterbank
from .bs_roformer import BSRoformer
from .loss import MultiResolutionSTFTLoss
from .mel_band_roformer import MelBandRoformer


class SwapLastAxes(nn.Module):
    """(batch, seq, channels) <-> (batch, channels, seq), for the convolutions."""

    def forward(self, x):
        return x.transpose(1, 2)


class MacaronFeedForward(nn.Module):
    """Half-step feed-forward: 0.5 * FeedForward(x)."""

    def __init__(self, dim, mult, dropout):
        super().__init__()
        self.ff = FeedForward(dim, mult, dropout)

    def forward(self, x):
        return self.ff(x) * 0.5


class ConformerConvModule(nn.Module):
    """RMSNorm, pointwise conv to 2 x inner + GLU, depthwise conv (odd `kernel_size`, same padding), BatchNorm,
    SiLU, pointwise conv back to dim, dropout; over the sequence axis. Indices in `net` are MSST's keys."""

    def __init__(self, dim, expansion_factor, kernel_size, dropout):
        super().__init__()
        inner = dim * expansion_factor
        self.net = nn.Sequential(
            RMSNorm(dim),
            SwapLastAxes(),
            nn.Conv1d(dim, 2 * inner, 1),
            nn.GLU(dim=1),
            nn.Conv1d(inner, inner, kernel_size, padding=(kernel_size - 1) // 2, groups=inner),
            nn.BatchNorm1d(inner),
            nn.SiLU(),
            nn.Conv1d(inner, dim, 1),
            SwapLastAxes(),
            nn.Dropout(dropout),
        )

    def forward(self, x):
        return self.net(x)


class ConformerBlock(nn.Module):
    """x + ff1/2, + attention, + convolution, + ff2/2, then RMSNorm."""

    def __init__(self, *, dim, heads, dim_head, ff_mult, attn_dropout, ff_dropout, conv_expansion_factor,
                 conv_kernel_size, rotary_embed, flash_attn):
        super().__init__()
        self.ff1 = MacaronFeedForward(dim, ff_mult, ff_dropout)
        self.attn = Attention(dim, heads, dim_head, attn_dropout, rotary_embed, flash_attn)
        self.conv = ConformerConvModule(dim, conv_expansion_factor, conv_kernel_size, ff_dropout)
        self.ff2 = MacaronFeedForward(dim, ff_mult, ff_dropout)
        self.out_norm = RMSNorm(dim)

    def forward(self, x):
        x = x + self.ff1(x)
        x = x + self.attn(x)[0]
        x = x + self.conv(x)
        x = x + self.ff2(x)
        return self.out_norm(x)


class Conformer(nn.Module):
    """`depth` conformer blocks over sequences (batch, seq, dim); no output norm (MSST builds none in these models).
    Takes and returns the (unused) first values so that it fits the Roformer's axis loop."""

    def __init__(self, *, depth, grad_checkpoint=False, **block_options):
        super().__init__()
        self.grad_checkpoint = grad_checkpoint
        self.in_blocks = False  # the plain path only
        self.layers = nn.ModuleList(ConformerBlock(**block_options) for _ in range(depth))

    def _forward(self, x):
        for block in self.layers:
            x = block(x)
        return x

    def forward(self, x, first_values=None):
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, use_reentrant=False), None
        return self._forward(x), None


ROFORMER_ONLY_OPTIONS = ("time_transformer_depth", "freq_transformer_depth", "linear_transformer_depth", "use_pope",
                         "add_value_residual")


class _Conformer:
    """What both conformer classes change in the shared Roformer: their axis blocks. Options: the model's own, with
    the depths named `time_conformer_depth`, `freq_conformer_depth`, `linear_conformer_depth`, plus the conformer's
    `ff_mult`, `conv_expansion_factor` and `conv_kernel_size`."""

    def __init__(self, dim: int, *, time_conformer_depth: int = 2, freq_conformer_depth: int = 2,
                 linear_conformer_depth: int = 0, ff_mult: int = 4, conv_expansion_factor: int = 2,
                 conv_kernel_size: int = 31, **options):
        for key in ROFORMER_ONLY_OPTIONS:
            if key in options:
                raise TypeError(f"unknown model option {key!r} for a conformer model type "
                                f"(its depths are time_conformer_depth, freq_conformer_depth, linear_conformer_depth)")
        if conv_kernel_size % 2 != 1:
            raise ValueError(f"conv_kernel_size must be odd, got {conv_kernel_size}")
        self.conformer_options = dict(ff_mult=ff_mult, conv_expansion_factor=conv_expansion_factor,
                                      conv_kernel_size=conv_kernel_size)
        super().__init__(dim, time_transformer_depth=time_conformer_depth, freq_transformer_depth=freq_conformer_depth,
                         linear_transformer_depth=linear_conformer_depth, **options)

    def _axis_transformer(self, block, depth, positions, common, add_value_residual):
        return Conformer(depth=depth, dim=common["dim"], heads=common["heads"], dim_head=common["dim_head"],
                         attn_dropout=common["attn_dropout"], ff_dropout=common["ff_dropout"],
                         flash_attn=common["flash_attn"], grad_checkpoint=common["grad_checkpoint"],
                         rotary_embed=positions["rotary_embed"], **self.conformer_options)


class BSConformer(_Conformer, BSRoformer):
    """MSST's `bs_conformer`: BSRoformer's options, changed as `_Conformer` says."""


class MelBandConformer(_Conformer, MelBandRoformer):
    """MSST's `mel_band_conformer`: MelBandRoformer's options with the conformer depths and options of BSConformer.
    Unlike the Mel-Band RoFormer its mask MLP has `mask_estimator_depth` Linear layers (not one more), and the
    corners of its band matrix follow their neighbours (see `mel_conformer_band_membership`)."""

    EXTRA_MASK_LAYERS = 0
    TRANSFORMER_NORMS = False  # the linear transformers too end without an RMSNorm

    def __init__(self, dim: int, **options):
        super().__init__(dim, **options)
        # compat: MSST's Mel conformer loss hops max(multi_stft_hop_size, w // 4) at window size w
        loss = self.multi_resolution_loss
        self.multi_resolution_loss = MultiResolutionSTFTLoss(
            loss.window_sizes, loss.hop_length, loss.stft_n_fft, loss.normalized,
            options.get("multi_stft_window_fn", torch.hann_window), quarter_window_hop=True,
        )

    @staticmethod
    def band_membership(sample_rate: int, n_fft: int, num_bands: int) -> torch.Tensor:
        """compat: MSST's Mel conformer sets the filterbank's corners to a quarter of their inner neighbours (the
        Roformer sets them to 1), so the lowest bin is in the first band exactly when the second bin is."""
        weights = torch.from_numpy(slaney_mel_filterbank(sample_rate, n_fft, num_bands))
        membership = weights > 0
        membership[0, 0] = bool(weights[0, 1] > 0)
        membership[-1, -1] = bool(weights[-1, -2] > 0)
        if not membership.any(dim=0).all():
            raise ValueError(f"{num_bands} mel bands leave some of the {n_fft // 2 + 1} STFT bins uncovered")
        return membership
