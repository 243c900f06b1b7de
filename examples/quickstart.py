"""A first look at the API: build a small BS-RoFormer, train it briefly on a synthetic mix, save it with its config,
then separate a song file into stem files with the same code `bs-roformer separate` uses.

    python examples/quickstart.py
"""

import math
import tempfile
from pathlib import Path

import soundfile
import torch
import yaml

from bs_roformer import BSRoformer
from bs_roformer.checkpoint import describe, load_state_dict
from bs_roformer.separate import Separator

torch.manual_seed(0)
sample_rate, seconds = 44100, 1.0
t = torch.arange(int(sample_rate * seconds)) / sample_rate


def synthetic_batch(batch: int):
    """A 'vocal' (a vibrato tone) over 'accompaniment' (noise bursts): returns (mixture, vocals), stereo."""
    pitch = 220 * 2 ** torch.randint(0, 12, (batch, 1, 1)) ** (1 / 12)
    vocals = 0.3 * torch.sin(2 * math.pi * pitch * t + 3 * torch.sin(2 * math.pi * 5 * t)).expand(batch, 2, -1)
    accompaniment = 0.1 * torch.randn(batch, 2, t.numel()) * (torch.rand(batch, 1, 8).repeat_interleave(t.numel() // 8 + 1, -1)[..., : t.numel()] > 0.5)
    return vocals + accompaniment, vocals


model_options = dict(dim=32, depth=1, stereo=True, heads=2, dim_head=16, time_transformer_depth=1,
                     freq_transformer_depth=1, stft_hop_length=441)
model = BSRoformer(**model_options)
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
    folder = Path(folder)
    torch.save(model.state_dict(), folder / "model.ckpt")  # classic key layout: loads into MSST's code too
    config = {"audio": {"sample_rate": sample_rate, "chunk_size": 44100}, "model": model_options,
              "training": {"instruments": ["vocals", "other"], "target_instrument": "vocals"},
              "inference": {"num_overlap": 2, "batch_size": 2}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    print(describe(load_state_dict(folder / "model.ckpt")))

    song = torch.cat([synthetic_batch(1)[0][0] for _ in range(4)], dim=-1)  # 4 s
    soundfile.write(str(folder / "song.wav"), song.numpy().T, sample_rate)
    separator = Separator.from_files(folder / "config.yaml", folder / "model.ckpt", device="cpu")
    for path in separator.separate_file(folder / "song.wav", folder / "separated", instrumental=True).paths:
        print("wrote", path.relative_to(folder), soundfile.info(str(path)).duration, "s")
