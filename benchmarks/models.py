"""Speed and memory of our BSRoformer / MelBandRoformer against the classic reference package, same weights.

    python benchmarks/models.py                 # BS and Mel, dim 128, depth 6, 8 s stereo, 3 repeats
    python benchmarks/models.py --quick         # dim 64, depth 2, 4 s, 1 repeat (a smoke run)
    python benchmarks/models.py --compile       # adds training steps of our model under torch.compile
    python benchmarks/models.py --size kim      # Kim's Mel-Band RoFormer (dim 384, depth 6), fp32 inference
    python benchmarks/models.py --size viperx   # viperx's BS-RoFormer (dim 512, depth 12), fp32 inference

Needs the reference package in its own directory (see benchmarks/reference.py). Both run in one process per model,
alternating, with the weights of the reference loaded into ours (ours with zero_dc=False, the classic computation).
Peak memory is measured in fresh subprocesses (peak RSS minus RSS after building the model). Everything runs under
the GLIBC_TUNABLES of reference.py; the script re-executes itself with them when they are missing.
"""

import argparse
import os
import statistics
import subprocess
import sys

from reference import (DEFAULT_REFERENCE, TUNABLES, import_reference, require_reference,
                       rerun_with_allocator_settings, rss_mb, timed)

if __name__ == "__main__":
    rerun_with_allocator_settings()

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count  # noqa: E402

import bs_roformer as ours  # noqa: E402


def cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """torch's FlopCounterMode has no formula for the CPU flash kernel and would count attention as free."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash_attention_flops}


def build(side: str, model: str, config: dict, reference_path: str):
    kwargs = dict(config, stereo=True, attn_dropout=0.0, ff_dropout=0.0, stft_hop_length=441)
    if side == "reference":
        package = import_reference(reference_path)
    else:
        package, kwargs = ours, dict(kwargs, zero_dc=False)
    return getattr(package, "BSRoformer" if model == "bs" else "MelBandRoformer")(**kwargs)


def run_inference(model, audio, bf16: bool):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return model(audio)


def run_training_step(model, audio, target, bf16: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(audio, target=target)
    loss.backward()


def matmul_peak(dtype) -> float:
    """FLOP/s of a large square matrix product, the machine's practical peak for `dtype`."""
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    a @ b
    seconds = min(timed(lambda: a @ b) for _ in range(5))
    return 2 * 2048**3 / seconds


def measure_memory(args) -> None:
    """Subprocess entry: print the peak RSS growth (MB) of one inference or training step."""
    torch.set_num_threads(args.threads)
    config = CONFIGS[args.size]
    model = build(args.side, args.model, config["model"], args.reference)
    seconds = config["seconds"] if args.mode == "inference" else config["train_seconds"]
    audio = torch.randn(1, 2, int(seconds * 44100)) * 0.1
    baseline = rss_mb("VmRSS")
    if args.mode == "inference":
        run_inference(model.eval(), audio, bf16=False)
    else:
        run_training_step(model.train(), audio, torch.randn_like(audio) * 0.1, bf16=False)
    print(rss_mb("VmHWM") - baseline)


# Training steps use shorter audio: an 8 s step of the reference at dim 128, depth 6 needs over 20 GB. The published
# sizes time fp32 inference on one 8 s chunk only (their training steps need a GPU's memory).
CONFIGS = {
    "default": dict(model=dict(dim=128, depth=6, time_transformer_depth=1, freq_transformer_depth=1), seconds=8.0,
                    train_seconds=2.0, models="bs,mel"),
    "quick": dict(model=dict(dim=64, depth=2, time_transformer_depth=1, freq_transformer_depth=1), seconds=4.0,
                  train_seconds=1.0, models="bs,mel"),
    "kim": dict(model=dict(dim=384, depth=6, num_bands=60, mask_estimator_depth=2, time_transformer_depth=1,
                           freq_transformer_depth=1), seconds=8.0, train_seconds=None, models="mel"),
    "viperx": dict(model=dict(dim=512, depth=12, time_transformer_depth=1, freq_transformer_depth=1), seconds=8.0,
                   train_seconds=None, models="bs"),
}


def snr_db(estimate, reference) -> float:
    return (10 * torch.log10(reference.pow(2).sum() / (estimate - reference).pow(2).sum())).item()


def benchmark(model_name: str, args) -> list[str]:
    config = CONFIGS[args.size]
    reference = build("reference", model_name, config["model"], args.reference).eval()
    model = build("ours", model_name, config["model"], args.reference).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    audio = torch.randn(1, 2, int(config["seconds"] * 44100)) * 0.1
    inference_only = config["train_seconds"] is None
    train_audio = torch.randn(1, 2, int((config["train_seconds"] or 1) * 44100)) * 0.1
    target = torch.randn_like(train_audio) * 0.1

    fp32 = run_inference(model, audio, bf16=False)
    reference_fp32 = run_inference(reference, audio, bf16=False)
    length = reference_fp32.shape[-1]
    parity = (fp32[..., :length] - reference_fp32).abs().max().item()
    with_bf16 = not inference_only and "bf16" in args.precisions.split(",")
    if with_bf16:
        snr_ours = snr_db(run_inference(model, audio, bf16=True), fp32)
        snr_reference = snr_db(run_inference(reference, audio, bf16=True), reference_fp32)
    with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
        run_inference(model, audio, bf16=False)
    flops = counter.get_total_flops()

    tasks = {
        "inference fp32": lambda m: run_inference(m.eval(), audio, bf16=False),
        "inference bf16": lambda m: run_inference(m.eval(), audio, bf16=True),
        "train step fp32": lambda m: run_training_step(m.train(), train_audio, target, bf16=False),
        "train step bf16": lambda m: run_training_step(m.train(), train_audio, target, bf16=True),
    }
    if inference_only:
        tasks = {"inference fp32": tasks["inference fp32"]}
    tasks = {task: fn for task, fn in tasks.items() if task.split()[-1] in args.precisions.split(",")}
    runs = [(task, fn, model) for task, fn in tasks.items()]
    if args.compile:  # as the training loop's `compile: true` does; the reference side stays eager
        compiled = build("ours", model_name, config["model"], args.reference).compile_transformer_stack()
        compiled.load_state_dict(model.state_dict())
        runs += [(f"{task}, ours compiled", fn, compiled) for task, fn in tasks.items() if task.startswith("train")]
    times = {}
    for task, fn, ours_model in runs:
        for side in (ours_model, reference):  # warm-up: allocator pools, rotary caches, packed weights, compilation
            fn(side)
        samples = {"ours": [], "reference": []}
        for _ in range(args.repeats):  # alternate the two sides so drifts in machine speed hit both
            samples["ours"].append(timed(lambda: fn(ours_model)))
            samples["reference"].append(timed(lambda: fn(reference)))
        times[task] = {side: statistics.median(values) for side, values in samples.items()}
        print(f"  {model_name} {task}: ours {times[task]['ours']:.2f} s, reference {times[task]['reference']:.2f} s",
              file=sys.stderr)

    memory = {}
    for mode in ("inference",) if inference_only else ("inference", "train"):
        for side in ("ours", "reference"):
            command = [sys.executable, __file__, "--measure-memory", "--side", side, "--model", model_name,
                       "--mode", mode, "--size", args.size, "--reference", args.reference,
                       "--threads", str(args.threads)]
            memory[mode, side] = float(subprocess.run(command, capture_output=True, text=True, check=True).stdout)

    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    reference_fp32_time = times.get("inference fp32", {}).get("reference")
    rows = []
    for task, result in times.items():
        ratio = result["reference"] / result["ours"]
        row = f"| {model_name} | {task} | {result['ours']:.2f} | {result['reference']:.2f} | {ratio:.2f}x |"
        if task == "inference bf16" and reference_fp32_time:
            row += f" {reference_fp32_time / result['ours']:.2f}x |"
        else:
            row += " |"
        if task.startswith("inference"):
            peak = peak16 if "bf16" in task else peak32
            row += f" {flops / result['ours'] / peak:.0%} |"
        else:
            row += " |"
        rows.append(row)
    train_memory = ("", "") if inference_only else (f" / {memory['train', 'ours']:.0f}",
                                                    f" / {memory['train', 'reference']:.0f}")
    rows.append(
        f"| {model_name} | peak memory, MB (inference{'' if inference_only else ' / train step'}) | "
        f"{memory['inference', 'ours']:.0f}{train_memory[0]} | "
        f"{memory['inference', 'reference']:.0f}{train_memory[1]} | | | |"
    )
    notes = (f"{model_name}: {sum(p.numel() for p in model.parameters()):,} parameters, forward "
             f"{flops / 1e9:.0f} GFLOP; fp32 max |ours - reference| = {parity:.1e}")
    if with_bf16:
        notes += f"; bf16 output SNR against fp32: ours {snr_ours:.1f} dB, reference {snr_reference:.1f} dB"
    return rows, notes, (peak32, peak16)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default=DEFAULT_REFERENCE, help="directory holding bs-roformer==0.3.10")
    parser.add_argument("--models", help="bs, mel or bs,mel (default: the size's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count()))
    parser.add_argument("--quick", action="store_true", help="small model, short audio, one repeat")
    parser.add_argument("--compile", action="store_true", help="add training steps of our model under torch.compile")
    parser.add_argument("--size", default="default", choices=CONFIGS, help="default: dim 128, depth 6; kim and "
                        "viperx: the published models' sizes, fp32 inference only")
    parser.add_argument("--measure-memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precisions", default="fp32,bf16", help="fp32, bf16 or both (bf16 is emulated, and slow, "
                        "on CPUs without AVX512-BF16 or AMX)")
    parser.add_argument("--side", choices=("ours", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=("bs", "mel"), help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("inference", "train"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.size, args.repeats = "quick", 1
    if args.measure_memory:
        return measure_memory(args)
    require_reference(args.reference)
    config = CONFIGS[args.size]
    models = (args.models or config["models"]).split(",")
    if not args.child:  # one fresh process per model: a heap grown by one model's runs slows the next one's
        training = (f", {config['train_seconds']:g} s for training steps (forward, loss, backward)"
                    if config["train_seconds"] else "")
        print(f"torch {torch.__version__}, {args.threads} threads, batch 1, stereo 44.1 kHz: {config['seconds']:g} s "
              f"for inference{training}; model {config['model']}, hop 441, median of {args.repeats}, "
              f"{args.precisions}, GLIBC_TUNABLES={TUNABLES}\n")
        print("| model | task | ours (s) | reference (s) | speed-up | vs reference fp32 | of matmul peak |")
        print("|---|---|---|---|---|---|---|", flush=True)
        notes = []
        for model_name in models:
            command = [sys.executable, __file__, "--child", "--models", model_name, "--size", args.size,
                       "--repeats", str(args.repeats), "--threads", str(args.threads), "--reference", args.reference,
                       "--precisions", args.precisions]
            command += ["--compile"] if args.compile else []
            lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()
            print("\n".join(line for line in lines if line.startswith("|")), flush=True)
            notes += [line for line in lines if line and not line.startswith("|")]
        print("\n" + "\n".join(dict.fromkeys(notes)))
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows, notes, peaks = benchmark(models[0], args)
    print("\n".join(rows))
    print(notes)
    print(f"matmul peak measured here: {peaks[0] / 1e12:.2f} TFLOP/s fp32, {peaks[1] / 1e12:.2f} TFLOP/s bf16")


if __name__ == "__main__":
    main()
