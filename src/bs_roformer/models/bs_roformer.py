"""BS-RoFormer (Lu et al. 2023): band-split RoPE transformer with fixed, non-overlapping frequency bands."""

from itertools import accumulate

import torch

from .bands import DEFAULT_FREQS_PER_BANDS
from .heads import build_mask_estimator
from .roformer import Roformer, shared_options, warn_ignored


class BSRoformer(Roformer):
    """Band-Split RoFormer, with the constructor of the classic package and the semantics of MSST's copy.

    `freqs_per_bands` gives the number of STFT bins in each band, lowest first; they must add up to
    `stft_n_fft // 2 + 1`. The mask estimator has `mask_estimator_depth` Linear layers. The output has the input's
    length (MSST; the classic package returned `hop * (samples // hop)` samples, the same values). `use_pope`: polar
    instead of rotary positions (MSST). `mask_estimator`: `{kind: ...}` selects one of unwa's mask heads (heads.py).
    """

    def __init__(
        self,
        dim: int,
        *,
        depth: int,
        stereo: bool = False,
        num_stems: int = 1,
        time_transformer_depth: int = 2,
        freq_transformer_depth: int = 2,
        linear_transformer_depth: int = 0,
        freqs_per_bands: tuple[int, ...] = DEFAULT_FREQS_PER_BANDS,
        dim_head: int = 64,
        heads: int = 8,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        flash_attn: bool = True,
        stft_n_fft: int = 2048,
        stft_hop_length: int = 512,
        stft_win_length: int = 2048,
        stft_normalized: bool = False,
        stft_window_fn=None,
        zero_dc: bool = True,
        mask_estimator_depth: int = 2,
        multi_stft_resolution_loss_weight: float = 1.0,
        multi_stft_resolutions_window_sizes: tuple[int, ...] = (4096, 2048, 1024, 512, 256),
        multi_stft_hop_size: int = 147,
        multi_stft_normalized: bool = False,
        multi_stft_window_fn=torch.hann_window,
        mlp_expansion_factor: int = 4,
        use_torch_checkpoint: bool = False,
        skip_connection: bool = False,
        add_value_residual: bool = False,
        use_pope: bool = False,
        mask_estimator: dict | None = None,
        **ignored,
    ):
        warn_ignored(ignored, stft_n_fft)
        num_bins = stft_n_fft // 2 + 1
        freqs_per_bands = tuple(int(width) for width in freqs_per_bands)
        if len(freqs_per_bands) < 2 or sum(freqs_per_bands) != num_bins or min(freqs_per_bands) < 1:
            raise ValueError(
                f"freqs_per_bands must be at least 2 positive band widths adding up to stft_n_fft // 2 + 1 = "
                f"{num_bins} bins (stft_n_fft={stft_n_fft}); got {len(freqs_per_bands)} bands adding up to "
                f"{sum(freqs_per_bands)}"
            )
        if mask_estimator_depth < 1:
            raise ValueError(f"mask_estimator_depth must be >= 1 for BSRoformer, got {mask_estimator_depth}")
        edges = list(accumulate(freqs_per_bands, initial=0))
        band_bins = [list(range(start, end)) for start, end in zip(edges[:-1], edges[1:])]
        self.freqs_per_bands = freqs_per_bands
        self.mask_estimator_config = mask_estimator
        super().__init__(**shared_options(locals()), band_bins=band_bins, mask_linear_layers=mask_estimator_depth,
                         transformer_norms=False, final_norm=True)

    def _mask_estimator(self, dim, feature_indices, num_features, mask_linear_layers, mlp_expansion_factor,
                        flash_attn):
        return build_mask_estimator(self.mask_estimator_config, dim, feature_indices, num_features,
                                    mask_linear_layers, mlp_expansion_factor, flash_attn)
