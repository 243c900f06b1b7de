"""The HyperACE residual mask heads of unwa's BS-RoFormer HyperACE models (`mask_estimator.kind`
`hyperace_residual_v1` / `hyperace_residual_v2`).

A convolutional segmentation network reads the transformer stack's tokens as an image (channels = dim, height =
frames, width = bands) and predicts 4 maps (channel x real/imag) over the STFT bins; they are added to the per-band
MLP masks. The network (module names are the checkpoints' keys):
- backbone: a depthwise-separable stem and four stages (`p2`..`p5`, 256/384/512/768 channels), each halving the
  frames (v2: stages p4 and p5 also halve the bands);
- hyperace: the four stage outputs resized to p4's size and fused, then split into a high-order part (hypergraph
  convolutions over adaptively generated hyperedges, Zhang et al. 2025 "YOLOv13", arXiv:2506.17733), a low-order
  part (separable convolutions) and a pass-through part, fused again;
- decoder: a feature pyramid from p5 back to p2, each level gated by the resized HyperACE features;
- upsample_head: four frequency pixel shuffles (x2 in width each; v2 refines each with a TFC-TDF block), resized to
  the bins, then a final convolution to the 4 maps.
Norms are InstanceNorm2d (affine, eps 1e-8), activations SiLU, convolutions without bias. Described from splifft
0.0.9's implementation (the only public one), with which the parity fixtures were made.
"""

import torch
import torch.nn.functional as F
from torch import nn

STAGE_CHANNELS = (256, 384, 512, 768)  # p2..p5, fixed by the published models
STEM_CHANNELS = 64
STAGE_DEPTH = 2  # bottlenecks per stage: p2 and p5 this many, p3 and p4 twice as many
OUT_MAPS = 4  # (audio channel, real/imag) for stereo


def instance_norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=True, eps=1e-8)


def resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class Conv(nn.Module):
    """Conv2d (same padding, no bias) -> InstanceNorm -> SiLU."""

    def __init__(self, channels_in, channels_out, kernel=1, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, kernel, stride, kernel // 2, bias=False)
        self.bn = instance_norm(channels_out)

    def forward(self, x):
        return F.silu(self.bn(self.conv(x)))


class DSConv(nn.Module):
    """Depthwise kxk conv (stride `stride`) -> pointwise conv -> InstanceNorm -> SiLU."""

    def __init__(self, channels_in, channels_out, kernel=3, stride=1):
        super().__init__()
        self.dwconv = nn.Conv2d(channels_in, channels_in, kernel, stride, kernel // 2, groups=channels_in, bias=False)
        self.pwconv = nn.Conv2d(channels_in, channels_out, 1, bias=False)
        self.bn = instance_norm(channels_out)

    def forward(self, x):
        return F.silu(self.bn(self.pwconv(self.dwconv(x))))


class DSBottleneck(nn.Module):
    """x + DSConv(DSConv(x))."""

    def __init__(self, channels):
        super().__init__()
        self.dsconv1 = DSConv(channels, channels)
        self.dsconv2 = DSConv(channels, channels)

    def forward(self, x):
        return x + self.dsconv2(self.dsconv1(x))


class DSC3k(nn.Module):
    """CSP block: cv3(cat(bottlenecks(cv1(x)), cv2(x))), hidden width = channels_out * expansion."""

    def __init__(self, channels_in, channels_out, bottlenecks=1, expansion=0.5):
        super().__init__()
        hidden = int(channels_out * expansion)
        self.cv1 = Conv(channels_in, hidden)
        self.cv2 = Conv(channels_in, hidden)
        self.cv3 = Conv(2 * hidden, channels_out)
        self.m = nn.Sequential(*[DSBottleneck(hidden) for _ in range(bottlenecks)])

    def forward(self, x):
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], dim=1))


class DSC3k2(nn.Module):
    """cv2(DSC3k(cv1(x))) at half the output width."""

    def __init__(self, channels_in, channels_out, bottlenecks=1):
        super().__init__()
        hidden = channels_out // 2
        self.cv1 = Conv(channels_in, hidden)
        self.m = DSC3k(hidden, hidden, bottlenecks, expansion=1.0)
        self.cv2 = Conv(hidden, channels_out)

    def forward(self, x):
        return self.cv2(self.m(self.cv1(x)))


class AdaptiveHyperedgeGeneration(nn.Module):
    """Participation of each of n nodes in each of `num_hyperedges` hyperedges: prototypes (global, plus an offset
    from the mean- and max-pooled context) scored against the projected nodes per head, averaged over heads,
    softmax over the nodes. Returns (batch, hyperedges, nodes)."""

    def __init__(self, channels, num_hyperedges, num_heads):
        super().__init__()
        self.num_hyperedges, self.num_heads = num_hyperedges, num_heads
        self.global_proto = nn.Parameter(torch.randn(num_hyperedges, channels))
        self.context_mapper = nn.Linear(2 * channels, num_hyperedges * channels, bias=False)
        self.query_proj = nn.Linear(channels, channels, bias=False)

    def forward(self, nodes):  # (batch, n, channels)
        batch, n, channels = nodes.shape
        context = torch.cat([nodes.mean(dim=1), nodes.amax(dim=1)], dim=-1)
        prototypes = self.global_proto + self.context_mapper(context).view(batch, self.num_hyperedges, channels)
        head_dim = channels // self.num_heads
        queries = self.query_proj(nodes).view(batch, n, self.num_heads, head_dim).transpose(1, 2)
        prototypes = prototypes.view(batch, self.num_hyperedges, self.num_heads, head_dim).permute(0, 2, 3, 1)
        scores = (queries @ prototypes * head_dim**-0.5).mean(dim=1)  # (batch, n, hyperedges)
        return torch.softmax(scores.transpose(1, 2), dim=-1)


class HypergraphConvolution(nn.Module):
    """Nodes -> hyperedges (weighted sums, W_e, SiLU) -> nodes (transposed weights, W_v, SiLU), added to the nodes."""

    def __init__(self, channels_in, channels_out):
        super().__init__()
        self.W_e = nn.Linear(channels_in, channels_in, bias=False)
        self.W_v = nn.Linear(channels_in, channels_out, bias=False)

    def forward(self, nodes, incidence):
        edges = F.silu(self.W_e(incidence @ nodes))
        return nodes + F.silu(self.W_v(incidence.transpose(1, 2) @ edges))


class AdaptiveHypergraphComputation(nn.Module):
    """The pixels of a feature map (batch, channels, h, w) as nodes of an adaptive hypergraph."""

    def __init__(self, channels, num_hyperedges, num_heads):
        super().__init__()
        self.adaptive_hyperedge_gen = AdaptiveHyperedgeGeneration(channels, num_hyperedges, num_heads)
        self.hypergraph_conv = HypergraphConvolution(channels, channels)

    def forward(self, x):
        batch, channels, height, width = x.shape
        nodes = x.flatten(2).transpose(1, 2)
        out = self.hypergraph_conv(nodes, self.adaptive_hyperedge_gen(nodes))
        return out.transpose(1, 2).reshape(batch, -1, height, width)


class C3AH(nn.Module):
    """cv3(cat(hypergraph(cv2(x)), cv1(x)))."""

    def __init__(self, channels, num_hyperedges, num_heads):
        super().__init__()
        self.cv1 = Conv(channels, channels)
        self.cv2 = Conv(channels, channels)
        self.ahc = AdaptiveHypergraphComputation(channels, num_hyperedges, num_heads)
        self.cv3 = Conv(2 * channels, channels)

    def forward(self, x):
        return self.cv3(torch.cat([self.ahc(self.cv2(x)), self.cv1(x)], dim=1))


class HyperACE(nn.Module):
    """Fuses the four stages at p4's size; half the channels go through `high_branches` hypergraph blocks, a quarter
    through `low_branches` separable blocks, the rest straight on; fused to `channels_out`."""

    def __init__(self, stage_channels, channels_out, num_hyperedges, num_heads, high_branches, low_branches):
        super().__init__()
        middle = stage_channels[2]
        self.split = [int(middle * 0.5), int(middle * 0.25)]
        self.split.append(middle - sum(self.split))
        high, low, rest = self.split
        self.fuse_conv = Conv(sum(stage_channels), middle)
        self.high_order_branch = nn.ModuleList(C3AH(high, num_hyperedges, num_heads) for _ in range(high_branches))
        self.high_order_fuse = Conv(high * high_branches, high)
        self.low_order_branch = nn.Sequential(*[DSC3k(low, low, 1, expansion=1.0) for _ in range(low_branches)])
        self.final_fuse = Conv(high + low + rest, channels_out)

    def forward(self, stages):
        size = stages[2].shape[2:]
        fused = self.fuse_conv(torch.cat([s if i == 2 else resize(s, size) for i, s in enumerate(stages)], dim=1))
        high, low, rest = fused.split(self.split, dim=1)
        high = self.high_order_fuse(torch.cat([branch(high) for branch in self.high_order_branch], dim=1))
        return self.final_fuse(torch.cat([high, self.low_order_branch(low), rest], dim=1))


class GatedFusion(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, features, hyper):
        return features + self.gamma * hyper


class Backbone(nn.Module):
    """Stem and stages p2..p5; each halves the frames, v2's p4 and p5 the bands too. Returns the four stages."""

    def __init__(self, channels_in, halve_bands_late: bool):
        super().__init__()
        c2, c3, c4, c5 = STAGE_CHANNELS
        late_stride = 2 if halve_bands_late else (2, 1)
        self.stem = DSConv(channels_in, STEM_CHANNELS, stride=(2, 1))
        self.p2 = nn.Sequential(DSConv(STEM_CHANNELS, c2, stride=(2, 1)), DSC3k2(c2, c2, STAGE_DEPTH))
        self.p3 = nn.Sequential(DSConv(c2, c3, stride=(2, 1)), DSC3k2(c3, c3, 2 * STAGE_DEPTH))
        self.p4 = nn.Sequential(DSConv(c3, c4, stride=late_stride), DSC3k2(c4, c4, 2 * STAGE_DEPTH))
        self.p5 = nn.Sequential(DSConv(c4, c5, stride=late_stride), DSC3k2(c5, c5, STAGE_DEPTH))

    def forward(self, x):
        p2 = self.p2(self.stem(x))
        p3 = self.p3(p2)
        p4 = self.p4(p3)
        return [p2, p3, p4, self.p5(p4)]


class Decoder(nn.Module):
    """From p5 down to p2: each level = its skip conv (+ the upsampled coarser level through a DSC3k2), gated with
    the HyperACE features resized to it; p2's level goes through `final_d2`."""

    def __init__(self, hyper_channels):
        super().__init__()
        c2, c3, c4, c5 = STAGE_CHANNELS
        levels = ((5, c5), (4, c4), (3, c3), (2, c2))  # registration order = the checkpoints' key order
        for level, channels in levels:
            setattr(self, f"h_to_d{level}", Conv(hyper_channels, channels))
        for level, channels in levels:
            setattr(self, f"fusion_d{level}", GatedFusion(channels))
        for level, channels in levels:
            setattr(self, f"skip_p{level}", Conv(channels, channels))
        self.up_d5 = DSC3k2(c5, c4)
        self.up_d4 = DSC3k2(c4, c3)
        self.up_d3 = DSC3k2(c3, c2)
        self.final_d2 = DSC3k2(c2, c2)

    def _gate(self, level, x, hyper):
        return getattr(self, f"fusion_d{level}")(x, getattr(self, f"h_to_d{level}")(resize(hyper, x.shape[2:])))

    def forward(self, stages, hyper):
        p2, p3, p4, p5 = stages
        d = self._gate(5, self.skip_p5(p5), hyper)
        for level, skip, up in ((4, p4, self.up_d5), (3, p3, self.up_d4), (2, p2, self.up_d3)):
            d = up(resize(d, skip.shape[2:])) + getattr(self, f"skip_p{level}")(skip)
            d = self._gate(level, d, hyper)
        return self.final_d2(d)


class TfcTdfBlock(nn.Module):
    """TFC-TDF (Choi et al.): norm-act-conv3x3, plus a bottlenecked fully-connected layer over the width (bands),
    norm-act-conv3x3, plus a 1x1 shortcut of the input. Sequential indices are the checkpoints' keys."""

    def __init__(self, channels_in, channels_out, width, bottleneck=4):
        super().__init__()
        self.tfc1 = nn.Sequential(instance_norm(channels_in), nn.SiLU(),
                                  nn.Conv2d(channels_in, channels_out, 3, 1, 1, bias=False))
        narrow = width // bottleneck
        self.tdf = nn.Sequential(instance_norm(channels_out), nn.SiLU(), nn.Linear(width, narrow, bias=False),
                                 instance_norm(channels_out), nn.SiLU(), nn.Linear(narrow, width, bias=False))
        self.tfc2 = nn.Sequential(instance_norm(channels_out), nn.SiLU(),
                                  nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False))
        self.shortcut = nn.Conv2d(channels_in, channels_out, 1, bias=False)

    def forward(self, x):
        shortcut = self.shortcut(x)
        x = self.tfc1(x)
        x = x + self.tdf(x)
        return self.tfc2(x) + shortcut


class TfcTdf(nn.Module):
    def __init__(self, channels, width, blocks=2):
        super().__init__()
        self.blocks = nn.ModuleList(TfcTdfBlock(channels, channels, width) for _ in range(blocks))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class FreqPixelShuffle(nn.Module):
    """DSConv to channels_out x 2, then the 2 sub-channels of each channel interleaved into twice the width
    (v2: refined by a TFC-TDF block at the new width)."""

    def __init__(self, channels_in, channels_out, refine_width: int | None):
        super().__init__()
        self.conv = DSConv(channels_in, 2 * channels_out)
        if refine_width is not None:
            self.out_conv = TfcTdf(channels_out, refine_width)

    def forward(self, x):
        x = self.conv(x)
        batch, channels, height, width = x.shape
        x = x.view(batch, channels // 2, 2, height, width).permute(0, 1, 3, 4, 2).reshape(batch, -1, height, 2 * width)
        return self.out_conv(x) if hasattr(self, "out_conv") else x


class UpsampleHead(nn.Module):
    """Four frequency pixel shuffles (v1 widths c, c/2, c/2, c/4; v2 c/2, c/4, c/8, c/16 with TFC-TDF refinement),
    resized to `bins` in width, then the final convolution (v1 1x1, v2 3x3) to the output maps."""

    def __init__(self, channels, bins, bands, version):
        super().__init__()
        self.bins = bins
        if version == 1:
            widths = [channels, channels, channels // 2, channels // 2, channels // 4]
        else:
            widths = [channels, channels // 2, channels // 4, channels // 8, channels // 16]
        for index in range(4):
            refine = bands * 2 ** (index + 1) if version == 2 else None
            setattr(self, f"block{index + 1}", FreqPixelShuffle(widths[index], widths[index + 1], refine))
        kernel = 1 if version == 1 else 3
        self.final_conv = nn.Conv2d(widths[-1], OUT_MAPS, kernel, padding=kernel // 2, bias=False)

    def forward(self, x):
        for index in range(4):
            x = getattr(self, f"block{index + 1}")(x)
        if x.shape[-1] != self.bins:
            x = resize(x, (x.shape[2], self.bins))
        return self.final_conv(x)


class HyperACESegmentation(nn.Module):
    """tokens as (batch, dim, frames, bands) -> (batch, 4, frames, bins)."""

    def __init__(self, dim, bands, bins, version, num_hyperedges, num_heads):
        super().__init__()
        self.backbone = Backbone(dim, halve_bands_late=version == 2)
        hyper_channels = STAGE_CHANNELS[2]
        self.hyperace = HyperACE(STAGE_CHANNELS, hyper_channels, num_hyperedges, num_heads,
                                 high_branches=3 if version == 1 else 2, low_branches=2 if version == 1 else 1)
        self.decoder = Decoder(hyper_channels)
        self.upsample_head = UpsampleHead(STAGE_CHANNELS[0], bins, bands, version)

    def forward(self, x):
        stages = self.backbone(x)
        decoded = self.decoder(stages, self.hyperace(stages))
        return self.upsample_head(resize(decoded, (x.shape[2], decoded.shape[-1])))  # back to the input's frames
