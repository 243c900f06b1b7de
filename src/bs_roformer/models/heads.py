"""Community mask heads of BS-RoFormer (unwa's models), selected by the model option `mask_estimator: {kind: ...}`
(splifft's config form; the published MSST YAMLs carry no such key, the head lives in a replaced model file, so
`infer_config` recognises it from the checkpoint's keys).

- `axial_refiner_large_v2` ("BS-Roformer Large v2"): `axial_refiner_depth` pairs of one-layer time and band
  transformers (8 heads of 64, their own rotary positions, no output norms), then an RMSNorm, run on the
  transformer stack's output before the usual per-band MLPs.

- `hyperace_residual_v1`, `hyperace_residual_v2` (the BS-RoFormer HyperACE models): a convolutional segmentation
  network over the tokens (see hyperace.py) whose 4 maps over the bins are added to the per-band MLP masks;
  options `num_hyperedges` (v1 16, v2 32) and `num_heads` (8). Stereo only (the maps are channel x real/imag).

The only public implementation is splifft 0.0.9's; the parity fixtures come from running it.
"""

import torch
from torch import nn

from .attention import RMSNorm, RotaryEmbedding, Transformer
from .bands import MaskEstimator
from .hyperace import OUT_MAPS, HyperACESegmentation

# kind -> the options it takes, with their defaults
MASK_ESTIMATOR_KINDS = {
    "baseline": {},
    "axial_refiner_large_v2": {"axial_refiner_depth": 4},
    "hyperace_residual_v1": {"num_hyperedges": 16, "num_heads": 8},
    "hyperace_residual_v2": {"num_hyperedges": 32, "num_heads": 8},
}


class ConstantRotaryEmbedding(RotaryEmbedding):
    """Rotary positions whose frequencies are not stored in checkpoints (the refiner's layout has none)."""

    def __init__(self, dim_head: int):
        super().__init__(dim_head)
        freqs = self.freqs.data
        del self.freqs
        self.register_buffer("freqs", freqs, persistent=False)


class AxialRefinerMaskEstimator(MaskEstimator):
    """The per-band MLP mask estimator after an axial transformer refiner of the tokens (batch, frames, bands, dim).

    Heads and head width are fixed (8 x 64) by the published models."""

    HEADS, DIM_HEAD = 8, 64

    def __init__(self, dim, feature_indices, num_features, num_linear, mlp_expansion_factor, *, axial_refiner_depth,
                 flash_attn=True):
        super().__init__(dim, feature_indices, num_features, num_linear, mlp_expansion_factor)
        time_rotary, freq_rotary = ConstantRotaryEmbedding(self.DIM_HEAD), ConstantRotaryEmbedding(self.DIM_HEAD)
        common = dict(dim=dim, depth=1, heads=self.HEADS, dim_head=self.DIM_HEAD, attn_dropout=0.0, ff_dropout=0.0,
                      flash_attn=flash_attn)
        self.layers = nn.ModuleList(
            nn.ModuleList([Transformer(rotary_embed=time_rotary, **common),
                           Transformer(rotary_embed=freq_rotary, **common)])
            for _ in range(axial_refiner_depth)
        )
        self.norm = RMSNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, frames, bands, d = x.shape
        for time_transformer, freq_transformer in self.layers:
            x = x.transpose(1, 2).reshape(b * bands, frames, d)
            x, _ = time_transformer(x)
            x = x.reshape(b, bands, frames, d).transpose(1, 2).reshape(b * frames, bands, d)
            x, _ = freq_transformer(x)
            x = x.reshape(b, frames, bands, d)
        return super().forward(self.norm(x))


class HyperACEResidualMaskEstimator(MaskEstimator):
    """The per-band MLP masks plus the HyperACE segmentation network's maps (same (bin, channel, real/imag) order)."""

    def __init__(self, dim, feature_indices, num_features, num_linear, mlp_expansion_factor, *, version,
                 num_hyperedges, num_heads):
        super().__init__(dim, feature_indices, num_features, num_linear, mlp_expansion_factor)
        if num_features % OUT_MAPS:
            raise ValueError("the HyperACE mask heads need a stereo model (stereo: true): their 4 maps per bin are "
                             "(channel, real/imag)")
        self.segm = HyperACESegmentation(dim, len(feature_indices), num_features // OUT_MAPS, version, num_hyperedges,
                                         num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.segm(x.permute(0, 3, 1, 2))  # (batch, 4, frames, bins)
        return super().forward(x) + maps.permute(0, 2, 3, 1).flatten(2)


def build_mask_estimator(config: dict | None, dim, feature_indices, num_features, num_linear, mlp_expansion_factor,
                         flash_attn):
    """The mask estimator of one stem for the `mask_estimator` model option (None: the classic one)."""
    config = dict(config or {"kind": "baseline"})
    kind = config.pop("kind", None)
    if kind not in MASK_ESTIMATOR_KINDS:
        raise ValueError(f"mask_estimator.kind must be one of {sorted(MASK_ESTIMATOR_KINDS)}, got {kind!r}")
    defaults = MASK_ESTIMATOR_KINDS[kind]
    if set(config) - set(defaults):
        raise ValueError(f"unknown mask_estimator option(s) {sorted(set(config) - set(defaults))} for kind {kind!r}; "
                         f"it takes {sorted(defaults) or 'none'}")
    options = {**defaults, **{key: value for key, value in config.items() if value is not None}}
    common = (dim, feature_indices, num_features, num_linear, mlp_expansion_factor)
    if kind == "axial_refiner_large_v2":
        return AxialRefinerMaskEstimator(*common, **options, flash_attn=flash_attn)
    if kind.startswith("hyperace_residual_v"):
        return HyperACEResidualMaskEstimator(*common, version=int(kind[-1]), **options)
    return MaskEstimator(*common)
