"""Training steps per second: our model against the classic reference package, same weights and configuration.

    python benchmarks/train.py            # BS dim 128 depth 6 (t1 f1), batch 2 of 2 s stereo, fp32 and bf16
    python benchmarks/train.py --quick    # dim 64 depth 2, batch 2 of 1 s

A step is what the training loop does per batch: forward with the model's loss, backward, gradient clipping and an
AdamW update. Both sides run in this process, alternating, under the GLIBC_TUNABLES of reference.py. Needs the
reference package in its own directory (see benchmarks/reference.py).
"""

import argparse
import statistics

from reference import DEFAULT_REFERENCE, TUNABLES, require_reference, rerun_with_allocator_settings, timed

if __name__ == "__main__":
    rerun_with_allocator_settings()

import torch  # noqa: E402

from bs_roformer import BSRoformer  # noqa: E402


def make_step(model, audio, target, bf16: bool):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(audio, target=target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default=DEFAULT_REFERENCE, help="directory holding bs-roformer==0.3.10")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    reference_package = require_reference(args.reference)
    torch.set_num_threads(args.threads)
    size = dict(dim=64, depth=2) if args.quick else dict(dim=128, depth=6)
    seconds, repeats = (1.0, 2) if args.quick else (2.0, args.repeats)
    options = dict(size, stereo=True, time_transformer_depth=1, freq_transformer_depth=1, stft_hop_length=441,
                   attn_dropout=0.0, ff_dropout=0.0)
    torch.manual_seed(0)
    reference = reference_package.BSRoformer(**options).train()
    ours = BSRoformer(**options, zero_dc=False).train()
    ours.load_state_dict(reference.state_dict(), strict=True)
    audio = torch.randn(2, 2, int(seconds * 44100)) * 0.1
    target = torch.randn_like(audio) * 0.1

    print(f"torch {torch.__version__}, {args.threads} threads, BSRoformer {options}, batch 2 x {seconds:g} s stereo, "
          f"AdamW steps with clipping, median of {repeats}, GLIBC_TUNABLES={TUNABLES}\n")
    print("| precision | ours (steps/s) | reference (steps/s) | speed-up |\n|---|---|---|---|")
    for bf16 in (False, True):
        steps = {"ours": make_step(ours, audio, target, bf16), "reference": make_step(reference, audio, target, bf16)}
        for step in steps.values():  # warm-up
            step()
        times = {name: [] for name in steps}
        for _ in range(repeats):
            for name, step in steps.items():
                times[name].append(timed(step))
        rate = {name: 1 / statistics.median(values) for name, values in times.items()}
        print(f"| {'bf16' if bf16 else 'fp32'} | {rate['ours']:.3f} | {rate['reference']:.3f} | "
              f"{rate['ours'] / rate['reference']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
