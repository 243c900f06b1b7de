"""The models on a CUDA GPU: ours against the classic reference package, same weights, alternating, in one process.

    python benchmarks/gpu.py                   # the published sizes: viperx BS (dim 512, depth 12), Kim's Mel (dim 384)
    python benchmarks/gpu.py --compile         # also ours under torch.compile (inductor; adds a minute or two)

Inference on a batch of 4 chunks of 8 s stereo (MSST's usual setting), training steps (forward, loss, backward) on
2 chunks of 4 s; fp32 (PyTorch's default, no TF32), bf16 and fp16 autocast. Peak memory is the allocator's peak.
Needs the reference package in its own directory (see benchmarks/reference.py).
"""

import argparse
import statistics

import torch

import bs_roformer as ours
from reference import DEFAULT_REFERENCE, require_reference

MODELS = {
    "bs": ("BSRoformer", dict(dim=512, depth=12, mask_estimator_depth=2)),
    "mel": ("MelBandRoformer", dict(dim=384, depth=6, num_bands=60, mask_estimator_depth=2)),
}
COMMON = dict(stereo=True, time_transformer_depth=1, freq_transformer_depth=1, stft_hop_length=441, attn_dropout=0.0,
              ff_dropout=0.0)
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cuda_seconds(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / 1000)
    return statistics.median(samples)


def peak_mb(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def inference(model, audio, dtype):
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
        return model(audio)


def training_step(model, audio, target, dtype):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = model(audio, target=target)
    loss.backward()


def benchmark(name: str, reference_package, args):
    """Print the table rows of one model."""
    class_name, kwargs = MODELS[name]
    reference = getattr(reference_package, class_name)(**COMMON, **kwargs).cuda()
    model = getattr(ours, class_name)(**COMMON, **kwargs, zero_dc=False).cuda()
    model.load_state_dict(reference.state_dict(), strict=True)
    audio = torch.randn(4, 2, 8 * 44100, device="cuda") * 0.1
    train_audio = torch.randn(2, 2, 4 * 44100, device="cuda") * 0.1
    target = torch.randn_like(train_audio) * 0.1
    for precision, dtype in DTYPES.items():
        tasks = {f"inference {precision}": lambda m: inference(m.eval(), audio, dtype),
                 f"train step {precision}": lambda m: training_step(m.train(), train_audio, target, dtype)}
        for task, fn in tasks.items():
            ours_seconds, ours_mb = cuda_seconds(lambda: fn(model), args.repeats), peak_mb(lambda: fn(model))
            try:
                seconds, mb = cuda_seconds(lambda: fn(reference), args.repeats), peak_mb(lambda: fn(reference))
                measured = f"{seconds * 1000:.0f} | {seconds / ours_seconds:.2f}x | {ours_mb:.0f} | {mb:.0f} |"
            except RuntimeError as error:  # the classic code takes view_as_complex of bf16 masks, which CUDA refuses
                measured = f"fails: {str(error).split(',')[0]} | | {ours_mb:.0f} | |"
            print(f"| {name} | {task} | {ours_seconds * 1000:.0f} | {measured}", flush=True)
    if args.compile:
        model.compile_transformer_stack()
        for precision in ("bf16", "fp16"):
            seconds = cuda_seconds(lambda: inference(model.eval(), audio, DTYPES[precision]), args.repeats)
            print(f"| {name} | inference {precision}, ours compiled | {seconds * 1000:.0f} | | | | |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default=DEFAULT_REFERENCE, help="directory holding bs-roformer==0.3.10")
    parser.add_argument("--models", default="bs,mel")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    reference_package = require_reference(args.reference)
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; inference: batch 4 x 8 s stereo; training "
          f"step: batch 2 x 4 s; median of {args.repeats}\n")
    print("| model | task | ours (ms) | reference (ms) | speed-up | ours peak MB | reference peak MB |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for name in args.models.split(","):
        benchmark(name, reference_package, args)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
