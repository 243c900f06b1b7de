"""Frequency bands: the band split (spectrum -> one token per band) and the mask estimators (tokens -> masks).

A band reads the flat spectral features of its bins in (bin, channel, real/imag) order, the order every classic
checkpoint was trained with. Parameters live under the classic per-band keys (`to_features.{band}...`,
`to_freqs.{band}...`), but nothing loops over bands at run time: bands of similar width are grouped, their weights
stacked (zero-padded to the group's widest band) and applied with one batched product per group.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import RMSNorm

DEFAULT_FREQS_PER_BANDS = (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129)


def band_feature_indices(band_bins: list[list[int]], channels: int) -> list[torch.Tensor]:
    """For each band, the positions of its features in the flat (bin, channel, real/imag) feature vector; on the CPU
    even where the model is built under another default device (`meta`), as they are read at construction."""
    offsets = torch.arange(2 * channels, device="cpu")
    return [(torch.tensor(bins, device="cpu")[:, None] * 2 * channels + offsets).flatten() for bins in band_bins]


def group_bands(widths: list[int], group_cost_fraction: float = 0.03) -> list[list[int]]:
    """Split bands (sorted by width) into groups run as one zero-padded batched product each.

    Minimises the padded size plus a fixed cost per group (`group_cost_fraction` of the total size, standing for one
    more kernel launch), so bands of equal width share a group and few groups remain (7 for the default BS bands).
    """
    order = sorted(range(len(widths)), key=lambda band: (widths[band], band))
    sorted_widths = [widths[band] for band in order]
    group_cost = group_cost_fraction * sum(widths)
    best = [0.0] + [math.inf] * len(order)
    start_of = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(end):
            cost = best[start] + group_cost + (end - start) * sorted_widths[end - 1]
            if cost < best[end]:
                best[end], start_of[end] = cost, start
    groups, end = [], len(order)
    while end > 0:
        groups.append(order[start_of[end] : end])
        end = start_of[end]
    return groups[::-1]


class WeightPacker:
    """Builds stacked weights from per-band parameters; caches them while the parameters cannot change.

    In training (gradients flowing to the parameters) packing is part of the graph and runs each call; in
    inference the packed tensors are reused until a parameter is modified, moved or replaced.
    """

    def __init__(self):
        self._cache: dict = {}

    def get(self, name: str, params: list[torch.Tensor], build):
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
            return build()
        signature = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        cached = self._cache.get(name)
        if cached is None or cached[0] != signature:
            with torch.inference_mode(False), torch.no_grad():  # reusable by a later training step (frozen bands)
                cached = (signature, build())
            self._cache[name] = cached
        return cached[1]


class _GroupedBands(nn.Module):
    """Index buffers shared by the band split and the mask estimators."""

    def __init__(self, feature_indices: list[torch.Tensor], num_features: int, halves: int):
        super().__init__()
        self.num_features = num_features
        self.feature_indices = feature_indices  # per band, kept for inspection; the forward uses the buffers below
        self.band_widths = [len(indices) for indices in feature_indices]
        self.groups = group_bands(self.band_widths)
        self.group_widths = [max(self.band_widths[band] for band in group) for group in self.groups]
        self._packer = WeightPacker()
        self.grouped_order = [band for group in self.groups for band in group]  # the bands, group after group
        for g, (group, width) in enumerate(zip(self.groups, self.group_widths)):
            # padded slots read (and write to) position `num_features`, an extra zero feature
            gather = torch.full((len(group), width), num_features, dtype=torch.long)
            for row, band in enumerate(group):
                gather[row, : self.band_widths[band]] = feature_indices[band]
            self.register_buffer(f"gather_{g}", gather, persistent=False)
            # where each band's rows of the variable-width layer (concatenated in group order) go in the zero-padded
            # stack; a layer whose output is `halves` blocks of the band width (2 for the GLU's value and gate
            # halves) pads each block separately, so the GLU split stays aligned
            rows = [row * halves * width + half * width + torch.arange(self.band_widths[band])
                    for row, band in enumerate(group) for half in range(halves)]
            self.register_buffer(f"padded_rows_{g}", torch.cat(rows), persistent=False)

    def _buffer(self, name: str, g: int) -> torch.Tensor:
        """Group g's `gather` or `padded_rows` index buffer."""
        return getattr(self, f"{name}_{g}")


class BandSplit(_GroupedBands):
    """Per band: RMSNorm over its features, then Linear(band width -> dim). Output (batch, frames, bands, dim)."""

    def __init__(self, dim: int, feature_indices: list[torch.Tensor], num_features: int):
        super().__init__(feature_indices, num_features, halves=1)
        self.dim = dim
        # the groups' outputs come concatenated in `grouped_order`; `band_order` puts them back in band order
        self.register_buffer("band_order", torch.tensor(self.grouped_order).argsort(), persistent=False)
        self.to_features = nn.ModuleList(
            [nn.Sequential(RMSNorm(width), nn.Linear(width, dim)) for width in self.band_widths]
        )

    def _packed(self, g: int):
        """(weight (bands, width, dim) with each band's norm gain folded in, bias (bands, dim)) for group g."""
        group, width = self.groups[g], self.group_widths[g]
        norms = [self.to_features[band][0] for band in group]
        linears = [self.to_features[band][1] for band in group]

        def build():
            gains = torch.cat([norm.gamma * norm.scale for norm in norms])
            rows = torch.cat([linear.weight.t() for linear in linears]) * gains[:, None]
            stacked = rows.new_zeros(len(group) * width, self.dim).index_copy(0, self._buffer("padded_rows", g), rows)
            return stacked.view(len(group), width, self.dim), torch.stack([linear.bias for linear in linears])

        params = [p for module in norms + linears for p in module.parameters()]
        return self._packer.get(f"group_{g}", params, build)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (batch, frames, num_features) in (bin, channel, real/imag) order."""
        features = F.pad(features, (0, 1))
        outputs = []
        for g in range(len(self.groups)):
            gather = self._buffer("gather", g)
            weight, bias = self._packed(g)
            band_features = F.normalize(features[..., gather], dim=-1)  # zero padding leaves the norm unchanged
            out = torch.einsum("btnw,nwd->btnd", band_features, weight)
            outputs.append(out + bias.to(out.dtype))
        return torch.cat(outputs, dim=2).index_select(2, self.band_order)


class MaskEstimator(_GroupedBands):
    """Per band: MLP (Tanh between Linear layers) then GLU, giving the band's complex mask features.

    `num_linear` Linear layers, hidden width `dim * mlp_expansion_factor`. Returns (batch, frames, num_features):
    each feature's mask summed over the bands that contain it (one band for BS-RoFormer, up to two for Mel).
    """

    HIDDEN_ELEMENTS_PER_SLICE = 2**24

    def __init__(self, dim, feature_indices, num_features, num_linear, mlp_expansion_factor=4):
        super().__init__(feature_indices, num_features, halves=2)
        self.register_buffer("grouped_index", torch.tensor(self.grouped_order), persistent=False)
        hidden = dim * mlp_expansion_factor
        self.to_freqs = nn.ModuleList()
        for width in self.band_widths:
            sizes = [dim] + [hidden] * (num_linear - 1) + [2 * width]
            layers = []
            for size_in, size_out in zip(sizes[:-1], sizes[1:]):
                layers += [nn.Linear(size_in, size_out), nn.Tanh()]
            self.to_freqs.append(nn.Sequential(nn.Sequential(*layers[:-1]), nn.GLU(dim=-1)))
        self.num_linear, self.hidden = num_linear, hidden
        scatter = torch.cat([self._buffer("gather", g).flatten() for g in range(len(self.groups))])
        self.register_buffer("scatter_index", scatter, persistent=False)

    def _linears(self, band: int) -> list[nn.Linear]:
        return list(self.to_freqs[band][0][::2])

    def _packed_hidden(self, layer: int):
        """(weight (bands, in, out), bias (bands, 1, out)) of hidden layer `layer`, bands in grouped order."""
        linears = [self._linears(band)[layer] for band in self.grouped_order]

        def build():
            weight = torch.stack([linear.weight for linear in linears]).transpose(1, 2)
            return weight, torch.stack([linear.bias for linear in linears])[:, None]

        return self._packer.get(f"hidden_{layer}", [p for m in linears for p in m.parameters()], build)

    def _packed_output(self, g: int):
        """(weight (bands, hidden, 2 * width), bias (bands, 1, 2 * width)) of the last layer for group g."""
        group, width = self.groups[g], self.group_widths[g]
        linears = [self._linears(band)[-1] for band in group]

        def build():
            positions = self._buffer("padded_rows", g)
            rows = torch.cat([linear.weight for linear in linears])
            weight = rows.new_zeros(len(group) * 2 * width, rows.shape[1]).index_copy(0, positions, rows)
            biases = torch.cat([linear.bias for linear in linears])
            bias = biases.new_zeros(len(group) * 2 * width).index_copy(0, positions, biases)
            return weight.view(len(group), 2 * width, -1).transpose(1, 2), bias.view(len(group), 1, 2 * width)

        return self._packer.get(f"output_{g}", [p for m in linears for p in m.parameters()], build)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, frames, bands, dim) -> (batch, frames, num_features)."""
        if torch.is_grad_enabled() or self.num_linear == 1:
            return self._masks(x)
        # In inference, slices of frames: every band's hidden layer at once (batch x frames x bands x 4 dim) would be
        # the model's largest tensor, where the classic loop holds one band's. A frame's masks depend on it alone.
        per_frame = x.shape[0] * x.shape[2] * self.hidden
        step = max(1, self.HIDDEN_ELEMENTS_PER_SLICE // per_frame)
        return torch.cat([self._masks(part) for part in x.split(step, dim=1)], dim=1)

    def _masks(self, x: torch.Tensor) -> torch.Tensor:
        # band-major (bands, batch * frames, features), bands in grouped order: each product is a batched matmul
        # on contiguous operands, and a group's bands are a contiguous block
        batch, frames = x.shape[:2]
        x = x.permute(2, 0, 1, 3).index_select(0, self.grouped_index).flatten(1, 2)
        for layer in range(self.num_linear - 1):
            weight, bias = self._packed_hidden(layer)
            x = torch.baddbmm(bias.to(x.dtype), x, weight).tanh_()  # in place: tanh's backward needs only its output
        masks = []
        for g, bands in enumerate(x.split([len(group) for group in self.groups])):
            weight, bias = self._packed_output(g)
            out = F.glu(torch.baddbmm(bias.to(bands.dtype), bands, weight), dim=-1)  # (bands, batch * frames, width)
            masks.append(out.transpose(0, 1).flatten(1))
        masks = torch.cat(masks, dim=-1)
        if torch.compiler.is_exporting():  # fp16 ONNX exports: onnxruntime's CPU ScatterND adds in float32 only
            masks = masks.float()
        # padded slots land in the extra slot `num_features`; one more keeps rows of (real, imag) pairs aligned
        summed = masks.new_zeros(batch * frames, self.num_features + 2).index_add_(-1, self.scatter_index, masks)
        return summed[:, : self.num_features].view(batch, frames, self.num_features)
