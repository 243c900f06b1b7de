"""Mel-Band RoFormer (Wang et al. 2023): overlapping bands on the Mel scale; overlapping masks are averaged."""

import torch

from ..mel import mel_band_membership
from .roformer import Roformer, shared_options, warn_ignored


class MelBandRoformer(Roformer):
    """Mel-Band RoFormer, with the constructor of the classic package and the semantics of MSST's copy.

    `num_bands` bands from the support of a Slaney Mel filterbank at `sample_rate`. The mask estimator has
    `mask_estimator_depth + 1` Linear layers (so a published config with depth 2 has three). Every transformer ends
    with its own RMSNorm. The output has `hop * (samples // hop)` samples unless `match_input_audio_length`.
    `use_pope`: polar instead of rotary positions (MSST).
    """

    # Linear layers of the mask MLP beyond `mask_estimator_depth`, and whether each transformer ends with an RMSNorm:
    # fixed by the published layout; MSST's Mel conformer (a subclass) differs in both
    EXTRA_MASK_LAYERS = 1
    TRANSFORMER_NORMS = True

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
        num_bands: int = 60,
        dim_head: int = 64,
        heads: int = 8,
        attn_dropout: float = 0.1,
        ff_dropout: float = 0.1,
        flash_attn: bool = True,
        sample_rate: int = 44100,
        stft_n_fft: int = 2048,
        stft_hop_length: int = 512,
        stft_win_length: int = 2048,
        stft_normalized: bool = False,
        stft_window_fn=None,
        zero_dc: bool = True,
        mask_estimator_depth: int = 1,
        multi_stft_resolution_loss_weight: float = 1.0,
        multi_stft_resolutions_window_sizes: tuple[int, ...] = (4096, 2048, 1024, 512, 256),
        multi_stft_hop_size: int = 147,
        multi_stft_normalized: bool = False,
        multi_stft_window_fn=torch.hann_window,
        match_input_audio_length: bool = False,
        mlp_expansion_factor: int = 4,
        use_torch_checkpoint: bool = False,
        skip_connection: bool = False,
        add_value_residual: bool = False,
        use_pope: bool = False,
        **ignored,
    ):
        warn_ignored(ignored, stft_n_fft)
        if mask_estimator_depth + self.EXTRA_MASK_LAYERS < 1:
            raise ValueError(f"mask_estimator_depth must be >= {1 - self.EXTRA_MASK_LAYERS} for "
                             f"{type(self).__name__}, got {mask_estimator_depth}")
        membership = self.band_membership(sample_rate, stft_n_fft, num_bands)
        band_bins = [row.nonzero().flatten().tolist() for row in membership]
        self.num_bands, self.sample_rate = num_bands, sample_rate
        self.match_input_audio_length = match_input_audio_length
        super().__init__(**shared_options(locals()), band_bins=band_bins,
                         mask_linear_layers=mask_estimator_depth + self.EXTRA_MASK_LAYERS,
                         transformer_norms=self.TRANSFORMER_NORMS, final_norm=False)

    band_membership = staticmethod(mel_band_membership)

    def _istft_length(self, samples: int) -> int | None:
        return samples if self.match_input_audio_length else None
