"""onnxruntime (CPU) against our eager PyTorch fp32 on one chunk, at published sizes and the benchmark size.

    python benchmarks/onnx_export.py                  # all sizes, 8 s stereo chunks, batch 1, 2 timed repeats
    python benchmarks/onnx_export.py --sizes bench128 --repeats 1

(Not `onnx.py`: run as a script, that name would shadow the `onnx` package.)

Sizes: Kim's Mel-Band RoFormer (dim 384, depth 6, 60 bands, mask_estimator_depth 2), viperx's BS-RoFormer (dim 512,
depth 12), and benchmarks/models.py's size (dim 128, depth 6, BS and Mel); random weights, stereo, hop 441, the
published models' zero_dc=False. `demo` is the shipped demo model on its own clip: its row also gives the fp16
export's SNR against the fp32 export (trained weights; the fp16 graph runs on the CPU through onnxruntime's casts).
Each row: export time (torch.onnx.export and save), onnxruntime session start, median chunk time of each side
after one warm-up call, and the largest difference over the largest output. Both sides use --threads threads.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from reference import rerun_with_allocator_settings, timed

if __name__ == "__main__":
    rerun_with_allocator_settings()

import torch  # noqa: E402

from bs_roformer import BSRoformer, MelBandRoformer  # noqa: E402
from bs_roformer.export import OnnxModel, export_onnx  # noqa: E402

PUBLISHED = dict(stereo=True, stft_hop_length=441, zero_dc=False, time_transformer_depth=1, freq_transformer_depth=1,
                 attn_dropout=0.0, ff_dropout=0.0)
SIZES = {
    "mel384": (MelBandRoformer, dict(dim=384, depth=6, num_bands=60, mask_estimator_depth=2, **PUBLISHED)),
    "bs512": (BSRoformer, dict(dim=512, depth=12, **PUBLISHED)),
    "bench128": (BSRoformer, dict(dim=128, depth=6, **PUBLISHED)),
    "mel128": (MelBandRoformer, dict(dim=128, depth=6, **PUBLISHED)),
    "demo": None,
}
NAMES = {"mel384": "Mel 384x6 (Kim)", "bs512": "BS 512x12 (viperx)", "bench128": "BS 128x6 (benchmark size)",
         "mel128": "Mel 128x6 (benchmark size)", "demo": "BS 64x1 (demo model)"}


def build(size: str, seconds: float):
    """(model, config, one chunk of audio)."""
    if size == "demo":
        from bs_roformer import demo
        from bs_roformer.audio import AudioReader
        from bs_roformer.config import load_model

        model, config = load_model(demo.CONFIG, demo.WEIGHTS)
        with AudioReader(demo.CLIP) as reader:
            clip = torch.from_numpy(next(reader.blocks()))
        chunk = int(config["audio"]["chunk_size"])
        return model, config, clip[None, :, :chunk].clone()
    model_class, options = SIZES[size]
    torch.manual_seed(0)
    model = model_class(**options).eval()
    chunk = int(seconds * 44100)
    config = {"model": dict(options), "audio": {"sample_rate": 44100, "chunk_size": chunk}}
    return model, config, 0.1 * torch.randn(1, 2, chunk)


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    return statistics.median(timed(fn) for _ in range(repeats))


def snr_db(estimate, reference) -> float:
    return (10 * torch.log10(reference.pow(2).sum() / (estimate - reference).pow(2).sum())).item()


def benchmark(size: str, args, folder: Path) -> str:
    model, config, audio = build(size, args.seconds)
    if isinstance(model, MelBandRoformer):
        model.match_input_audio_length = True  # as separation runs it; the graph gives the chunk's length
    path = folder / f"{size}.onnx"
    start = time.perf_counter()
    export_onnx(model, config, path, source_id=size, checkpoint_sha256="-", overwrite=True)
    export_seconds = time.perf_counter() - start
    start = time.perf_counter()
    onnx_model = OnnxModel(path, threads=args.threads)
    session_seconds = time.perf_counter() - start

    with torch.no_grad():
        expected = model(audio)
    difference = ((onnx_model(audio) - expected).abs().max() / expected.abs().max()).item()
    with torch.no_grad():
        torch_seconds = median_time(lambda: model(audio), args.repeats)
    onnx_seconds = median_time(lambda: onnx_model(audio), args.repeats)
    fp16 = ""
    if size == "demo":
        export_onnx(model, config, folder / "demo16.onnx", source_id=size, checkpoint_sha256="-", fp16=True,
                    overwrite=True)
        full = OnnxModel(path, threads=args.threads)(audio)
        half = OnnxModel(folder / "demo16.onnx", threads=args.threads)(audio)
        fp16 = f"{snr_db(half, full):.1f}"
    seconds = audio.shape[-1] / 44100
    return (f"| {NAMES[size]} | {seconds:g} | {export_seconds:.1f} | {session_seconds:.1f} | {torch_seconds:.2f} | "
            f"{onnx_seconds:.2f} | {torch_seconds / onnx_seconds:.2f}x | {difference:.1e} | {fp16} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="mel384,bs512,bench128,mel128,demo",
                        help=f"comma-separated, from {', '.join(SIZES)}")
    parser.add_argument("--seconds", type=float, default=8.0, help="chunk length (the demo uses its config's)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per side, after one warm-up")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = ["| model | chunk s | export s | session start s | torch eager fp32 s | onnxruntime CPU s | "
            "onnxruntime speed-up | max diff / max output | fp16 SNR dB |", "|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes.split(","):
            rows.append(benchmark(size, args, Path(folder)))
            print(rows[-1], file=sys.stderr, flush=True)
    print(f"torch {torch.__version__}, {args.threads} threads, batch 1, median of {args.repeats}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
