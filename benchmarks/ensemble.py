"""The cost of ensembles and shifts against one model: time and peak memory for 1 and 10 minutes of audio.

    python benchmarks/ensemble.py                                # 1 and 10 minutes, a stand-in model
    python benchmarks/ensemble.py --model roformer --minutes 0.25  # small random BS-RoFormers

Each case runs in its own process (peak RSS is per process; CPU time, with one torch thread, is the measure that
survives a shared machine): a stereo mix of the given length streams through
`stem_blocks` in 1 s blocks (as a file's blocks would), and the stems are consumed. All models take 1 s chunks,
overlap 2, batch 4. `--model light` (default) is a stand-in that costs almost nothing (tanh of the input), so the
times are the pipeline's own (overlap-add, the combiners, the STFTs of *_spec) and the memory is its buffers: peak
memory should not grow with the length. `--model roformer` is a random BS-RoFormer (dim 32, depth 1): the times are
then mostly the model's, so about one more model pass per member or shift.
"""

import argparse
import subprocess
import sys
import time

CASES = {
    "one model": {"models": 1, "algorithm": "mean", "shifts": 1},
    "2 models, mean": {"models": 2, "algorithm": "mean", "shifts": 1},
    "2 models, max_spec": {"models": 2, "algorithm": "max_spec", "shifts": 1},
    "one model, --shifts 2": {"models": 1, "algorithm": "mean", "shifts": 2},
}
RATE = 44100


def run_case(name: str, minutes: float, kind: str):
    import torch

    from bs_roformer import BSRoformer
    from bs_roformer.ensemble import EnsembleSeparator
    from bs_roformer.separate import Separator

    torch.set_num_threads(1)
    case = CASES[name]
    config = {"audio": {"sample_rate": RATE, "chunk_size": RATE}, "training": {"target_instrument": "vocals"},
              "inference": {"num_overlap": 2, "batch_size": 4}}
    separators = []
    for seed in range(case["models"]):
        torch.manual_seed(seed)
        model = light_model(0.5 + 0.1 * seed) if kind == "light" else BSRoformer(
            dim=32, depth=1, stereo=True, time_transformer_depth=1, freq_transformer_depth=1, stft_hop_length=441)
        separators.append(Separator(model, config, device="cpu", precision="fp32", name=f"m{seed}"))
    separator = separators[0] if case["models"] == 1 and case["shifts"] == 1 else \
        EnsembleSeparator(separators, case["algorithm"], shifts=case["shifts"])
    frames = int(minutes * 60 * RATE)
    generator = torch.Generator().manual_seed(0)
    mix = (0.1 * torch.randn(2, min(RATE, frames - start), generator=generator) for start in range(0, frames, RATE))
    start, cpu_start = time.perf_counter(), time.process_time()
    given = sum(block["vocals"].shape[-1] for block in separator.stem_blocks(mix, RATE, frames, 2))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    assert given == frames
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    print(f"{seconds:.1f} {cpu:.1f} {peak:.0f}")


def light_model(gain: float):
    """(b, channels, n) -> (b, channels, n): one stem, tanh(gain * input)."""
    import torch

    class Light(torch.nn.Module):
        def forward(self, batch):
            return torch.tanh(gain * batch)

    return Light()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10])
    parser.add_argument("--model", choices=["light", "roformer"], default="light")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_case(args.case, args.minutes[0], args.model)
        return
    print(f"model: {args.model}")
    print(f"{'case':24} {'minutes':>7} {'wall s':>7} {'CPU s':>7} {'CPU x one':>9} {'peak MB':>8}")
    for minutes in args.minutes:
        baseline = None
        for name in CASES:
            out = subprocess.run([sys.executable, __file__, "--case", name, "--minutes", str(minutes), "--model", args.model],
                                 capture_output=True, text=True, check=True).stdout.split()
            seconds, cpu, peak = float(out[0]), float(out[1]), float(out[2])
            baseline = baseline or cpu
            print(f"{name:24} {minutes:7g} {seconds:7.1f} {cpu:7.1f} {cpu / baseline:9.2f} {peak:8.0f}", flush=True)


if __name__ == "__main__":
    main()
