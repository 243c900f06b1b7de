"""A first look at the API: build a small BS-RoFormer, train it briefly on a synthetic mix, separate, save, reload.

    python examples/quickstart.py
"""

import math
import tempfile
from pathlib import Path

import torch

from bs_roformer import BSRoformer
from bs_roformer.checkpoint import describe, load_state_dict

torch.manual_seed(0)
sample_rate, seconds = 44100, 1.0
t = torch.arange(int(sample_rate * seconds)) / sample_rate


def synthetic_batch(batch: int):
    """A 'vocal' (a vibrato tone) over 'accompaniment' (noise bursts): returns (mixture, vocals), stereo."""
    pitch = 220 * 2 ** torch.randint(0, 12, (batch, 1, 1)) ** (1 / 12)
    vocals = 0.3 * torch.sin(2 * math.pi * pitch * t + 3 * torch.sin(2 * math.pi * 5 * t)).expand(batch, 2, -1)
    accompaniment = 0.1 * torch.randn(batch, 2, t.numel()) * (torch.rand(batch, 1, 8).repeat_interleave(t.numel() // 8 + 1, -1)[..., : t.numel()] > 0.5)
    return vocals + accompaniment, vocals


model = BSRoformer(dim=32, depth=1, stereo=True, heads=2, dim_head=16, time_transformer_depth=1,
                   freq_transformer_depth=1, stft_hop_length=441)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
for step in range(30):
    mixture, vocals = synthetic_batch(2)
    loss, (l1, multi_stft) = model(mixture, target=vocals, return_loss_breakdown=True)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 10 == 0 or step == 29:
        print(f"step {step:2d}: loss {loss.item():.3f} (waveform L1 {l1.item():.4f}, multi-STFT {multi_stft.item():.3f})")

model.eval()
mixture, vocals = synthetic_batch(1)
with torch.no_grad():
    estimate = model(mixture)  # (batch, channels, samples)
sdr = 10 * torch.log10(vocals.pow(2).sum() / (vocals - estimate).pow(2).sum())
print(f"separated {tuple(mixture.shape)} -> {tuple(estimate.shape)}, SDR {sdr.item():.1f} dB after 30 steps")

with tempfile.TemporaryDirectory() as folder:
    path = Path(folder) / "quickstart.ckpt"
    torch.save(model.state_dict(), path)  # classic key layout: loads into MSST and the reference package too
    print(describe(load_state_dict(path)))
