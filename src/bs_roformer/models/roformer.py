"""What BS-RoFormer and Mel-Band RoFormer share: STFT -> band split -> axial transformers -> masks -> iSTFT.

Shapes (einops letters): b batch, s audio channels, n stems, t samples, f STFT bins, T frames, k bands, d dim.
"""

import warnings

import torch
from torch import nn

from .attention import PolarEmbedding, RMSNorm, RotaryEmbedding, Transformer
from .bands import BandSplit, MaskEstimator, band_feature_indices
from .loss import MultiResolutionSTFTLoss, roformer_loss
from .stft import STFT

# Keys found in published configs that the model does not use; accepted with a warning so those configs load.
IGNORED_CONFIG_KEYS = {
    "dim_freqs_in": "the number of bins follows from stft_n_fft",
    "sage_attention": "SageAttention is a CUDA kernel choice; scaled_dot_product_attention is used",
}


# Constructor arguments both models take; each model's __init__ passes them on with `shared_options(locals())`.
SHARED_OPTIONS = (
    "dim", "depth", "stereo", "num_stems", "time_transformer_depth", "freq_transformer_depth",
    "linear_transformer_depth", "dim_head", "heads", "attn_dropout", "ff_dropout", "flash_attn", "stft_n_fft",
    "stft_hop_length", "stft_win_length", "stft_normalized", "stft_window_fn", "zero_dc", "mlp_expansion_factor",
    "multi_stft_resolution_loss_weight", "multi_stft_resolutions_window_sizes", "multi_stft_hop_size",
    "multi_stft_normalized", "multi_stft_window_fn", "use_torch_checkpoint", "skip_connection", "add_value_residual",
    "use_pope",
)


def shared_options(arguments: dict) -> dict:
    return {name: arguments[name] for name in SHARED_OPTIONS}


def warn_ignored(options: dict, stft_n_fft: int):
    """A warning for each option of IGNORED_CONFIG_KEYS, except a `dim_freqs_in` that agrees with `stft_n_fft`
    (published configs carry one; MSST ignores it too); any other option is a TypeError."""
    for key, value in options.items():
        if key not in IGNORED_CONFIG_KEYS:
            raise TypeError(f"unknown model option {key!r} (= {value!r})")
        if key == "dim_freqs_in" and value == stft_n_fft // 2 + 1:
            continue
        warnings.warn(f"model option {key}={value!r} is ignored: {IGNORED_CONFIG_KEYS[key]}", stacklevel=3)


class Roformer(nn.Module):
    """The common forward pass. Subclasses choose the bands and where the RMSNorms sit."""

    def __init__(
        self, *, dim, depth, band_bins, stereo, num_stems, time_transformer_depth, freq_transformer_depth,
        linear_transformer_depth, dim_head, heads, attn_dropout, ff_dropout, flash_attn,
        stft_n_fft, stft_hop_length, stft_win_length, stft_normalized, stft_window_fn, zero_dc,
        mask_linear_layers, mlp_expansion_factor, multi_stft_resolution_loss_weight,
        multi_stft_resolutions_window_sizes, multi_stft_hop_size, multi_stft_normalized, multi_stft_window_fn,
        use_torch_checkpoint, skip_connection, add_value_residual, use_pope, transformer_norms, final_norm,
    ):
        super().__init__()
        self.stereo = stereo
        self.audio_channels = 2 if stereo else 1
        self.num_stems = num_stems
        self.zero_dc = zero_dc
        self.skip_connection = skip_connection
        self.stft = STFT(stft_n_fft, stft_hop_length, stft_win_length, stft_normalized, stft_window_fn)

        # one position module per axis, shared by all its layers: rotary, or polar with `use_pope` (MSST)
        if use_pope:
            time_positions = dict(pope_embed=PolarEmbedding(dim_head, heads))
            freq_positions = dict(pope_embed=PolarEmbedding(dim_head, heads))
        else:
            time_positions = dict(rotary_embed=RotaryEmbedding(dim_head))
            freq_positions = dict(rotary_embed=RotaryEmbedding(dim_head))
        common = dict(dim=dim, heads=heads, dim_head=dim_head, attn_dropout=attn_dropout, ff_dropout=ff_dropout,
                      norm_output=transformer_norms, flash_attn=flash_attn, grad_checkpoint=use_torch_checkpoint)
        self.layers = nn.ModuleList()
        for block in range(depth):
            axes = [
                self._axis_transformer(block, time_transformer_depth, time_positions, common, add_value_residual),
                self._axis_transformer(block, freq_transformer_depth, freq_positions, common, add_value_residual),
            ]
            if linear_transformer_depth > 0:
                axes.insert(0, Transformer(depth=linear_transformer_depth, linear_attn=True, **common))
            self.layers.append(nn.ModuleList(axes))
        self.final_norm = RMSNorm(dim) if final_norm else None

        feature_indices = band_feature_indices(band_bins, self.audio_channels)
        num_features = 2 * self.audio_channels * self.stft.num_bins
        self.band_split = BandSplit(dim, feature_indices, num_features)
        self.mask_estimators = nn.ModuleList(
            self._mask_estimator(dim, feature_indices, num_features, mask_linear_layers, mlp_expansion_factor,
                                 flash_attn)
            for _ in range(num_stems)
        )
        # each bin's mask is the mean over the bands that contain it (1 everywhere for BS-RoFormer)
        all_indices = torch.cat(feature_indices)
        bands_per_feature = torch.zeros(num_features, device="cpu").index_add_(
            0, all_indices, torch.ones(len(all_indices), device="cpu"))
        self.register_buffer("inverse_band_count", 1.0 / bands_per_feature, persistent=False)
        self.averages_overlaps = bool((bands_per_feature > 1).any())

        self.multi_stft_resolution_loss_weight = multi_stft_resolution_loss_weight
        self.multi_resolution_loss = MultiResolutionSTFTLoss(
            multi_stft_resolutions_window_sizes, multi_stft_hop_size, stft_n_fft, multi_stft_normalized,
            multi_stft_window_fn,
        )

    def _axis_transformer(self, block: int, depth: int, positions: dict, common: dict, add_value_residual: bool):
        """The time or frequency transformer of `block`; the variants (experimental, conformer) build their own."""
        return Transformer(depth=depth, value_residual=add_value_residual, holds_first_values=block == 0,
                           **positions, **common)

    def _mask_estimator(self, dim, feature_indices, num_features, mask_linear_layers, mlp_expansion_factor,
                        flash_attn):
        """One stem's mask estimator; BS-RoFormer's `mask_estimator` option selects another head."""
        return MaskEstimator(dim, feature_indices, num_features, mask_linear_layers, mlp_expansion_factor)

    # ---- input checks -------------------------------------------------------------------------------------------

    def _check_audio(self, raw_audio: torch.Tensor) -> torch.Tensor:
        if raw_audio.ndim == 2:
            raw_audio = raw_audio.unsqueeze(1)
        if raw_audio.ndim != 3:
            raise ValueError(
                f"expected audio shaped (batch, samples) or (batch, channels, samples), got shape {tuple(raw_audio.shape)}"
            )
        channels, samples = raw_audio.shape[1], raw_audio.shape[-1]
        if channels != self.audio_channels:
            kind = "stereo" if self.stereo else "mono"
            raise ValueError(
                f"this model is {kind} (stereo={self.stereo}) and expects {self.audio_channels} channel(s), "
                f"got {channels}: {'duplicate the mono channel' if self.stereo else 'average the channels'} first, "
                f"or use a model built with stereo={not self.stereo}"
            )
        if samples <= self.stft.n_fft // 2:
            raise ValueError(
                f"input of {samples} samples is too short: the STFT (n_fft={self.stft.n_fft}) needs more than "
                f"{self.stft.n_fft // 2} samples; pad the audio"
            )
        if not torch.isfinite(raw_audio).all():
            raise ValueError("input audio contains NaN or infinite samples; replace them (e.g. torch.nan_to_num)")
        return raw_audio

    def _check_target(self, target: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
        """Accepts the output's shape, (b, t) for a mono one-stem model and (b, 1, s, t) for a one-stem model (MSST);
        a longer target is cut to the output's length, as the classic code does when the iSTFT drops samples."""
        if self.num_stems == 1 and target.ndim == 4 and target.shape[1] == 1:
            target = target.squeeze(1)
        if self.num_stems == 1 and not self.stereo and target.ndim == 2:
            target = target.unsqueeze(1)
        if target.shape[:-1] != estimate.shape[:-1] or target.shape[-1] < estimate.shape[-1]:
            layout = "(batch, stems, channels, samples)" if self.num_stems > 1 else "(batch, channels, samples)"
            raise ValueError(
                f"target must be shaped {layout} = {tuple(estimate.shape)} to match the output, "
                f"got {tuple(target.shape)}"
            )
        return target[..., : estimate.shape[-1]]

    # ---- forward --------------------------------------------------------------------------------------------------

    def _istft_length(self, samples: int) -> int | None:
        return samples

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        """The axial transformer stack over x (b, T, k, d)."""
        b, frames, bands, d = x.shape
        time_values = freq_values = None
        block_outputs = []
        for axes in self.layers:
            if len(axes) == 3:  # linear attention over all frames x bands tokens of an item
                x, _ = axes[0](x.reshape(b, frames * bands, d))
            if self.skip_connection:  # add every earlier block's output (after the linear transformer, as MSST)
                x = x.reshape(b, frames, bands, d)
                for earlier in block_outputs:
                    x = x + earlier
            time_transformer, freq_transformer = axes[-2:]
            x = x.reshape(b, frames, bands, d).transpose(1, 2).reshape(b * bands, frames, d)
            x, time_values = time_transformer(x, time_values)
            x = x.reshape(b, bands, frames, d).transpose(1, 2).reshape(b * frames, bands, d)
            x, freq_values = freq_transformer(x, freq_values)
            x = x.reshape(b, frames, bands, d)
            if self.skip_connection:
                block_outputs.append(x)
        return x

    def compile_transformer_stack(self, **options):
        """Run the axial transformer stack, where the time goes, through `torch.compile(fullgraph=True, **options)`;
        the rest stays eager (inductor has no kernels for the STFTs' complex tensors, and the loss keeps its own
        FFT backward). Compiling the whole model for training fails in inductor 2.13: its memory planner recurses
        past Python's limit on the backward graph. The compiled function is bound to this instance: build a new
        model rather than `deepcopy` this one. A second call keeps the first compilation."""
        if "_transform" not in self.__dict__:  # else compiling the compiled function would trace it again
            self._transform = torch.compile(self._transform, fullgraph=True, **options)
        return self

    def estimate_masks(self, features: torch.Tensor, active_stem_ids: list[int] | None = None) -> torch.Tensor:
        """The real-valued core between the STFT and the iSTFT: spectral features (b, T, f * s * 2) in (bin, channel,
        real/imag) order -> float32 masks (b, n, T, f * s * 2) in the same order, n the active stems (all by
        default; `bs_roformer.export` runs it between its own real-valued STFT and iSTFT)."""
        x = self.band_split(features)
        x = self._transform(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        heads = self.mask_estimators if active_stem_ids is None else [self.mask_estimators[i] for i in active_stem_ids]
        masks = torch.stack([estimator(x) for estimator in heads], dim=1).float()
        if self.averages_overlaps:
            masks = masks * self.inverse_band_count
        return masks

    def forward(self, raw_audio: torch.Tensor, target: torch.Tensor | None = None, return_loss_breakdown=False,
                active_stem_ids: list[int] | None = None):
        """raw_audio (b, t) or (b, s, t) -> stems (b, s, t) for one stem, (b, n, s, t) for several.

        With `target` (shaped like the output), returns the loss instead (and its parts with
        `return_loss_breakdown`). `active_stem_ids` (MSST): only these stems' heads run, the output holds those
        stems in that order, and the loss compares them with the same stems of the (full) target."""
        audio = self._check_audio(raw_audio)
        b, s, samples = audio.shape
        spec = self.stft(audio)  # (b, s, f, T) complex
        frames = spec.shape[-1]
        # features in (bin, channel, real/imag) order per frame: the order the band weights expect
        features = torch.view_as_real(spec).permute(0, 3, 2, 1, 4).reshape(b, frames, -1)

        masks = self.estimate_masks(features, active_stem_ids)
        masks = torch.view_as_complex(masks.view(b, masks.shape[1], frames, -1, s, 2))

        stems = spec.permute(0, 3, 2, 1).unsqueeze(1) * masks  # (b, n, T, f, s)
        stems = stems.permute(0, 1, 4, 3, 2)  # (b, n, s, f, T)
        if self.zero_dc:
            stems = torch.cat([torch.zeros_like(stems[..., :1, :]), stems[..., 1:, :]], dim=-2)
        estimate = self.stft.inverse(stems, self._istft_length(samples))
        if self.num_stems == 1:
            estimate = estimate.squeeze(1)

        if target is None:
            return estimate
        if active_stem_ids is not None and self.num_stems > 1:
            target = target[:, list(active_stem_ids)]
        target = self._check_target(target, estimate)
        total, parts = roformer_loss(estimate, target, self.multi_resolution_loss, self.multi_stft_resolution_loss_weight)
        return (total, parts) if return_loss_breakdown else total
