"""The `bs-roformer` command line, a thin layer over the package."""

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import __version__
from .audio import OUTPUT_FORMATS, AudioError, find_audio
from .checkpoint import describe, load_state_dict

# glibc hands large freed blocks back to the OS at once, so every chunk's big temporaries page-fault in again:
# on CPU that costs about half the run time and makes it swing 2x. These settings keep the memory instead.
ALLOCATOR_SETTINGS = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"


def use_fast_allocator_settings():
    """Re-run this command with ALLOCATOR_SETTINGS on Linux, unless GLIBC_TUNABLES is already set (set it to
    anything, even empty, to keep glibc's defaults)."""
    if sys.platform == "linux" and "GLIBC_TUNABLES" not in os.environ:
        os.environ["GLIBC_TUNABLES"] = ALLOCATOR_SETTINGS
        os.execv(sys.executable, [sys.executable, "-m", "bs_roformer", *sys.argv[1:]])


def inspect_command(args) -> int:
    print(describe(load_state_dict(args.checkpoint)))
    return 0


def model_files(args) -> tuple:
    """(config, checkpoint) from -c/-m, or the shipped demo model's with --demo."""
    if args.demo:
        if args.config or args.checkpoint:
            raise ValueError("--demo uses the shipped demo model: leave out --config and --checkpoint")
        from . import demo

        return demo.CONFIG, demo.WEIGHTS
    if not (args.config and args.checkpoint):
        raise ValueError("give the model as --config CONFIG.yaml --checkpoint WEIGHTS, or use --demo")
    return args.config, args.checkpoint


def onnx_separator(args):
    """The Separator of `separate --backend onnxruntime`: the model and its settings come from --onnx."""
    from .export import onnx_separator

    if not args.onnx:
        raise ValueError("--backend onnxruntime needs --onnx MODEL.onnx (made by `bs-roformer export`)")
    if args.config or args.checkpoint or args.demo:
        raise ValueError("--backend onnxruntime takes the model from --onnx: leave out --config, --checkpoint, --demo")
    if args.precision != "fp32":
        raise ValueError("an ONNX model's precision is fixed at export (`bs-roformer export --fp16`): "
                         "leave out --precision")
    return onnx_separator(args.onnx, args.onnx_provider, chunk_size=args.chunk_size, num_overlap=args.overlap,
                          batch_size=args.batch_size, tta=args.tta)


def separate_command(args) -> int:
    from .separate import Separator

    if args.onnx and args.backend != "onnxruntime":
        raise ValueError("--onnx runs with --backend onnxruntime")
    config, checkpoint = model_files(args) if args.backend == "torch" else (None, None)
    if not args.inputs:
        if not args.demo:
            raise ValueError("give the audio files or folders to separate")
        from . import demo

        args.inputs = [demo.CLIP]
    files, problems = find_audio(args.inputs)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not files:
        print("error: nothing to separate", file=sys.stderr)
        return 1
    if args.backend == "onnxruntime":
        separator = onnx_separator(args)
    else:
        separator = Separator.from_files(
            config, checkpoint, args.model_type, device=args.device, precision=args.precision,
            chunk_size=args.chunk_size, num_overlap=args.overlap, batch_size=args.batch_size, tta=args.tta,
        )
    stems = args.stems.split(",") if args.stems else None
    counts = {"separated": 0, "kept": 0, "failed": len(problems)}
    start, audio_seconds = time.perf_counter(), 0.0
    for path in files:
        try:
            written = separator.separate_file(
                path, args.output, template=args.filename, output_format=args.format, stems=stems,
                instrumental=args.instrumental, overwrite=args.overwrite, progress=not args.quiet,
            )
            counts["separated"] += 1
            audio_seconds += _duration(path)
            if not args.quiet:
                print(f"{path} -> {', '.join(map(str, written))}")
        except FileExistsError as error:
            counts["kept"] += 1
            print(f"skipped {path}: {error}", file=sys.stderr)
        except (AudioError, ValueError, OSError) as error:
            counts["failed"] += 1
            print(f"error: {path}: {error}", file=sys.stderr)
    elapsed = time.perf_counter() - start
    print(f"{counts['separated']} separated, {counts['kept']} kept (outputs exist), {counts['failed']} failed; "
          f"{audio_seconds:.1f} s of audio in {elapsed:.1f} s ({audio_seconds / max(elapsed, 1e-9):.1f}x real time)")
    return 1 if counts["failed"] else 0


def export_command(args) -> int:
    from .export import export_files

    config, checkpoint = model_files(args)
    try:
        metadata = export_files(config, checkpoint, args.output, source_id="demo" if args.demo else None,
                                model_type=args.model_type, chunk_size=args.chunk_size, opset=args.opset,
                                fp16=args.fp16, overwrite=args.overwrite)
    except FileExistsError as error:
        raise ValueError(str(error)) from None
    print(f"wrote {args.output}: {metadata['model_type']}, stems {', '.join(json.loads(metadata['stems']))}, "
          f"chunks of {metadata['chunk_size']} samples at {metadata['sample_rate']} Hz, {metadata['precision']}")
    return 0


def evaluate_command(args) -> int:
    from . import evaluate

    if args.estimates:
        if not (args.references or args.data):
            raise ValueError("--estimates needs --references (the test set the estimates were made from)")
        results, problems = evaluate.evaluate_estimates(args.references or args.data, args.estimates,
                                                        progress=not args.quiet)
    else:
        from .separate import Separator

        if not args.data:
            raise ValueError("give --data (and the model) to separate and score a test set, "
                             "or --estimates and --references to score stems on disk")
        config, checkpoint = model_files(args)
        separator = Separator.from_files(config, checkpoint, args.model_type, device=args.device,
                                         precision=args.precision, batch_size=args.batch_size)
        results, problems = evaluate.evaluate_model(separator, args.data, progress=not args.quiet)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if not results:
        print("error: no track could be scored", file=sys.stderr)
        return 1
    summary = evaluate.summarize(results)
    print(evaluate.format_table(results, summary))
    if args.json:
        evaluate.write_json(args.json, results, summary)
    if args.csv:
        evaluate.write_csv(args.csv, results)
    if args.plot:
        evaluate.write_plot(args.plot, results)
    return 0


def train_command(args) -> int:
    from .config import load_config
    from .separate import resolve_device
    from .train import train

    config = load_config(args.config)
    record = train(config, args.data, args.out, resume=args.resume, valid_dir=args.valid, init_checkpoint=args.init,
                   device=resolve_device(args.device), progress=not args.quiet)
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun, one report
        print(f"stopped at step {record.get('step', '-')}; checkpoints and metrics.jsonl in {args.out}")
    return 0


def synth_command(args) -> int:
    from .data.synth import write_dataset

    folders = write_dataset(args.out, args.tracks, args.seconds, args.seed, jobs=args.jobs)
    print(f"wrote {len(folders)} tracks of {args.seconds:g} s (vocals, drums, bass, other, mixture) to {args.out}")
    return 0


def _duration(path: Path) -> float:
    import soundfile

    try:
        info = soundfile.info(str(path))
        return info.frames / info.samplerate
    except Exception:
        return 0.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bs-roformer", description="BS-RoFormer and Mel-Band RoFormer")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    inspect = commands.add_parser("inspect", help="print the model configuration a checkpoint implies")
    inspect.add_argument("checkpoint", help=".ckpt/.pth/.pt or .safetensors file")
    inspect.set_defaults(run=inspect_command)

    separate = commands.add_parser("separate", help="split songs into stems")
    separate.add_argument("inputs", nargs="*", metavar="INPUT", help="audio files or folders (searched recursively)")
    separate.add_argument("-c", "--config", help="the model's YAML config (MSST format)")
    separate.add_argument("-m", "--checkpoint", help="the model's weights (.ckpt/.pth/.safetensors)")
    separate.add_argument("--demo", action="store_true", help="use the small demo model shipped in the package "
                          "(and, with no INPUT, its synthetic demo clip)")
    separate.add_argument("-o", "--output", type=Path, default=Path("separated"), help="output folder")
    separate.add_argument("--model-type", choices=("bs_roformer", "mel_band_roformer"),
                          help="override the config's training.model_type")
    separate.add_argument("-d", "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    separate.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                          help="bf16 is fast on recent CPUs and GPUs; fp16 on GPUs only")
    separate.add_argument("-b", "--batch-size", type=int, help="chunks per model call (default: the config's)")
    separate.add_argument("--overlap", type=int, help="chunks covering each sample (default: the config's num_overlap)")
    separate.add_argument("--chunk-size", type=int, help="chunk length in samples (default: the config's)")
    separate.add_argument("--tta", action="store_true", help="average with channel-swapped and polarity-inverted passes")
    separate.add_argument("--stems", help="comma-separated stems to write (default: all the model's stems)")
    separate.add_argument("--instrumental", action="store_true", help="also write the mixture minus the target stem")
    separate.add_argument("--format", default="wav32f", choices=sorted(OUTPUT_FORMATS),
                          help="wav16, wav24, wav32f (float, default), flac16, flac24")
    separate.add_argument("--filename", default="{track}/{stem}.{ext}",
                          help="output path template under OUTPUT, with {track}, {stem}, {ext}")
    separate.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: keep them)")
    separate.add_argument("--backend", default="torch", choices=("torch", "onnxruntime"),
                          help="run the model in PyTorch (from -c/-m or --demo) or an exported --onnx model")
    separate.add_argument("--onnx", type=Path, help="the model exported by `bs-roformer export` (onnxruntime backend)")
    separate.add_argument("--onnx-provider", default="cpu",
                          help="onnxruntime execution provider: cpu (default), cuda, tensorrt, directml, coreml")
    separate.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    separate.set_defaults(run=separate_command)

    export = commands.add_parser("export", help="export a model to ONNX, STFT and iSTFT inside the graph")
    export.add_argument("-c", "--config", help="the model's YAML config (MSST format)")
    export.add_argument("-m", "--checkpoint", help="the model's weights (.ckpt/.pth/.safetensors)")
    export.add_argument("--demo", action="store_true", help="export the small demo model shipped in the package")
    export.add_argument("--model-type", choices=("bs_roformer", "mel_band_roformer"),
                        help="override the config's training.model_type")
    export.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")
    export.add_argument("--opset", type=int, help="ONNX opset (default 18, the lowest it needs)")
    export.add_argument("--fp16", action="store_true",
                        help="the model between STFT and iSTFT in float16 (STFT, masks and iSTFT stay float32)")
    export.add_argument("--chunk-size", type=int, help="samples per chunk, fixed in the graph (default: the config's)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing output")
    export.set_defaults(run=export_command)

    evaluate = commands.add_parser("evaluate", help="score separations: global SDR, museval cSDR, SI-SDR, "
                                   "bleedless/fullness")
    evaluate.add_argument("-c", "--config", help="the model's YAML config, to separate --data first")
    evaluate.add_argument("-m", "--checkpoint", help="the model's weights, to separate --data first")
    evaluate.add_argument("--demo", action="store_true", help="separate --data with the shipped demo model")
    evaluate.add_argument("--data", type=Path, help="test set in the MUSDB18-HQ layout (<track>/<stem>.wav)")
    evaluate.add_argument("--estimates", type=Path, help="stems on disk to score (<track>/<stem>.wav)")
    evaluate.add_argument("--references", type=Path, help="the references for --estimates (MUSDB18-HQ layout)")
    evaluate.add_argument("--model-type", choices=("bs_roformer", "mel_band_roformer"))
    evaluate.add_argument("-d", "--device", default="auto")
    evaluate.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    evaluate.add_argument("-b", "--batch-size", type=int)
    evaluate.add_argument("--json", type=Path, help="write results and the per-stem summary as JSON")
    evaluate.add_argument("--csv", type=Path, help="write per-track, per-stem results as CSV")
    evaluate.add_argument("--plot", type=Path, help="write a PNG of per-track SDR per stem")
    evaluate.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(run=evaluate_command)

    train = commands.add_parser("train", help="train or fine-tune a model (MSST-style YAML config)")
    train.add_argument("-c", "--config", required=True, help="YAML config: model, training, audio, augmentations")
    train.add_argument("--data", type=Path, required=True, help="training tracks (MUSDB18-HQ layout)")
    train.add_argument("--out", type=Path, required=True, help="run folder: checkpoints and metrics.jsonl")
    train.add_argument("--valid", type=Path, help="validation tracks (MUSDB18-HQ layout), scored by global SDR")
    train.add_argument("--resume", action="store_true", help="continue from OUT/last.ckpt exactly")
    train.add_argument("--init", type=Path, help="start from these weights (fine-tuning a published model)")
    train.add_argument("-d", "--device", default="auto")
    train.add_argument("-q", "--quiet", action="store_true")
    train.set_defaults(run=train_command)

    synth = commands.add_parser("synth", help="write synthetic multi-stem songs in the MUSDB18-HQ layout")
    synth.add_argument("--out", type=Path, required=True, help="output folder (one folder per track)")
    synth.add_argument("--tracks", type=int, default=10)
    synth.add_argument("--seconds", type=float, default=10.0)
    synth.add_argument("--seed", type=int, default=0, help="same seed, same songs")
    synth.add_argument("-j", "--jobs", type=int, default=1, help="processes writing songs (same songs for any number)")
    synth.set_defaults(run=synth_command)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None and args.command == "separate":
        use_fast_allocator_settings()
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"bs-roformer {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
