"""Separating a song end to end (file in, stem files out): ours against MSST's plain chunk loop running the classic
reference model, same weights and settings; and our peak memory for 1 and 10 minutes of audio.

    python benchmarks/separate.py            # 60 s stereo song, BS dim 64 depth 4, 8 s chunks, overlap 2
    python benchmarks/separate.py --quick    # 20 s song, memory for 1 and 3 minutes

Needs the reference package in its own directory (see benchmarks/reference.py). The reference side is MSST's
`demix` as published (CPU accumulators, whole song in memory, fp32: MSST has no bf16), written plainly here.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from reference import DEFAULT_REFERENCE, TUNABLES, require_reference, rerun_with_allocator_settings, rss_mb, timed

if __name__ == "__main__":
    rerun_with_allocator_settings()

import numpy as np  # noqa: E402
import soundfile  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bs_roformer import BSRoformer  # noqa: E402
from bs_roformer.separate import Separator  # noqa: E402

MODEL = dict(dim=64, depth=4, stereo=True, time_transformer_depth=1, freq_transformer_depth=1, stft_hop_length=441,
             attn_dropout=0.0, ff_dropout=0.0)
CHUNK, OVERLAP, BATCH = 352800, 2, 1
CONFIG = {"audio": {"sample_rate": 44100, "chunk_size": CHUNK}, "model": MODEL,
          "training": {"target_instrument": "vocals"}, "inference": {"num_overlap": OVERLAP, "batch_size": BATCH}}


def make_song(path: Path, seconds: float):
    """A stereo test song: a vibrato tone over noise, written in blocks."""
    with soundfile.SoundFile(str(path), "w", 44100, 2, "FLOAT") as file:
        rng = np.random.default_rng(0)
        for start in range(0, int(seconds * 44100), 441000):
            t = (start + np.arange(min(441000, int(seconds * 44100) - start))) / 44100
            tone = 0.3 * np.sin(2 * np.pi * 330 * t + 2 * np.sin(2 * np.pi * 5 * t))
            file.write(np.stack([tone, 0.8 * tone], 1) + 0.05 * rng.standard_normal((t.size, 2)))


def msst_demix(model, mix: torch.Tensor) -> torch.Tensor:
    """MSST's demix (utils/model_utils.py) as published, batch size BATCH, on the CPU."""
    step, fade, border = CHUNK // OVERLAP, CHUNK // 10, CHUNK - CHUNK // OVERLAP
    length = mix.shape[-1]
    if length > 2 * border and border > 0:
        mix = F.pad(mix, (border, border), mode="reflect")
    window = torch.ones(CHUNK)
    window[:fade], window[-fade:] = torch.linspace(0, 1, fade), torch.linspace(1, 0, fade)
    result, counter = torch.zeros((1,) + tuple(mix.shape)), torch.zeros(mix.shape)
    batch, locations, i = [], [], 0
    with torch.inference_mode():
        while i < mix.shape[1]:
            part = mix[:, i : i + CHUNK]
            real = part.shape[-1]
            part = F.pad(part, (0, CHUNK - real), mode="reflect" if real > CHUNK // 2 else "constant")
            batch.append(part)
            locations.append((i, real))
            i += step
            if len(batch) >= BATCH or i >= mix.shape[1]:
                out = model(torch.stack(batch))
                w = window.clone()
                if i - step == 0:
                    w[:fade] = 1
                elif i >= mix.shape[1]:
                    w[-fade:] = 1
                for j, (start, seg) in enumerate(locations):
                    result[..., start : start + seg] += out[j, ..., :seg].cpu() * w[:seg]
                    counter[..., start : start + seg] += w[:seg]
                batch, locations = [], []
    estimate = torch.nan_to_num(result / counter, nan=0.0)
    return estimate[..., border : border + length] if length > 2 * border else estimate


def reference_file(model, song: Path, out_dir: Path):
    audio, rate = soundfile.read(str(song), dtype="float32", always_2d=True)
    vocals = msst_demix(model, torch.from_numpy(audio.T.copy()))[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(out_dir / "vocals.wav"), vocals.numpy().T, rate, subtype="FLOAT")


def measure_memory(args):
    """Subprocess entry: peak RSS growth (MB) separating a song of --seconds with our Separator."""
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        song = Path(folder) / "song.wav"
        make_song(song, args.seconds)
        separator = Separator(BSRoformer(**MODEL), CONFIG, device="cpu", precision="fp32")
        baseline = rss_mb("VmRSS")
        separator.separate_file(song, Path(folder) / "out", progress=False)
        print(rss_mb("VmHWM") - baseline)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default=DEFAULT_REFERENCE, help="directory holding bs-roformer==0.3.10")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--memory-minutes", default="1,10")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--precisions", default="fp32,bf16", help="ours in fp32, bf16 or both (bf16 is emulated, and "
                        "slow, on CPUs without AVX512-BF16 or AMX)")
    parser.add_argument("--measure-memory", action="store_true", help="internal: one memory measurement")
    args = parser.parse_args()
    if args.measure_memory:
        return measure_memory(args)
    if args.quick:
        args.seconds, args.memory_minutes, args.repeats = 20.0, "1,3", 1
    reference_package = require_reference(args.reference)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    reference = reference_package.BSRoformer(**MODEL).eval()
    model = BSRoformer(**MODEL, zero_dc=False)
    model.load_state_dict(reference.state_dict(), strict=True)

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        song = folder / "song.wav"
        make_song(song, args.seconds)
        runs = {
            "reference (MSST loop, classic model), fp32": lambda: reference_file(reference, song, folder / "ref"),
        }
        separators = {precision: Separator(model, CONFIG, device="cpu", precision=precision)
                      for precision in args.precisions.split(",")}
        for precision, separator in separators.items():
            runs[f"ours, {precision}"] = (lambda s: lambda: s.separate_file(song, folder / "ours", overwrite=True,
                                                                            progress=False))(separator)
        times = {name: [] for name in runs}
        for name, run in runs.items():  # warm-up
            run()
        for _ in range(args.repeats):
            for name, run in runs.items():
                times[name].append(timed(run))
        Separator(model, CONFIG, device="cpu", precision="fp32").separate_file(song, folder / "check", progress=False)
        ours, _ = soundfile.read(str(folder / "check" / "model" / "song" / "vocals.wav"))
        theirs, _ = soundfile.read(str(folder / "ref" / "vocals.wav"))
        difference = np.abs(ours - theirs).max()

    print(f"torch {torch.__version__}, {args.threads} threads, {args.seconds:g} s stereo 44.1 kHz song, "
          f"BSRoformer {MODEL}, chunk {CHUNK} (8 s), overlap {OVERLAP}, batch {BATCH}, median of {args.repeats}, "
          f"GLIBC_TUNABLES={TUNABLES}\n")
    print("| run | seconds | audio s per s | vs reference |")
    print("|---|---|---|---|")
    reference_time = statistics.median(times[next(iter(runs))])
    for name, values in times.items():
        seconds = statistics.median(values)
        print(f"| {name} | {seconds:.1f} | {args.seconds / seconds:.1f} | {reference_time / seconds:.2f}x |")
    print(f"\nmax |ours fp32 - reference| over the written vocals: {difference:.1e}")

    memory = {}
    for minutes in map(float, args.memory_minutes.split(",")):
        command = [sys.executable, __file__, "--measure-memory", "--seconds", str(minutes * 60),
                   "--threads", str(args.threads)]
        memory[minutes] = float(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    print("\n| song length | our peak memory growth (MB) |")
    print("|---|---|")
    for minutes, megabytes in memory.items():
        print(f"| {minutes:g} min | {megabytes:.0f} |")
    first, last = memory[min(memory)], memory[max(memory)]
    print(f"\ngrowth from {min(memory):g} to {max(memory):g} minutes: {last - first:+.0f} MB")


if __name__ == "__main__":
    main()
