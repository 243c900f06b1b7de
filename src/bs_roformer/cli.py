"""The `bs-roformer` command line, a thin layer over the package.

Module imports stay light (no torch): `separate` and `evaluate` re-run themselves with faster allocator settings
before anything heavy is loaded, and `--help` answers at once. Each command imports what it needs.
"""

import argparse
import os
import sys
import warnings
from pathlib import Path

from . import __version__
from .audio import DEFAULT_TEMPLATE, OUTPUT_FORMATS, TEMPLATE_FIELDS, AudioError
from .train_settings import LOSSES, METRICS, Training

# glibc hands large freed blocks back to the OS at once, so every chunk's big temporaries page-fault in again; these
# settings keep the memory instead (docs/performance.md has the measurements). Benchmarks import them from here.
ALLOCATOR_SETTINGS = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"


def use_fast_allocator_settings():
    """Re-run this command with ALLOCATOR_SETTINGS on Linux, unless GLIBC_TUNABLES is already set (set it to
    anything, even empty, to keep glibc's defaults)."""
    if sys.platform == "linux" and "GLIBC_TUNABLES" not in os.environ:
        os.environ["GLIBC_TUNABLES"] = ALLOCATOR_SETTINGS
        os.execv(sys.executable, [sys.executable, "-m", "bs_roformer", *sys.argv[1:]])


def inspect_command(args) -> int:
    from .checkpoint import describe, implied_yaml, load_state_dict

    state = load_state_dict(args.checkpoint)
    print(implied_yaml(state, args.checkpoint) if args.yaml else describe(state))
    return 0


NO_MODEL = ("give the model as --config CONFIG.yaml --checkpoint WEIGHTS, or use --demo, or name a published model "
            "with --model ID (`bs-roformer models` lists them)")


def model_files(args) -> list[tuple]:
    """(config, checkpoint, name) of each model the options give, in this order: -c/-m, --demo (the shipped demo
    model), each -n ID (a published model, downloaded on first use), each --member CONFIG CHECKPOINT."""
    members = []
    if args.demo and (args.config or args.checkpoint):
        raise ValueError("--demo uses the shipped demo model: leave out --config and --checkpoint (ensemble it "
                         "with other models through --member CONFIG CHECKPOINT or -n ID)")
    if args.config or args.checkpoint:
        if not (args.config and args.checkpoint):
            raise ValueError(NO_MODEL)
        members.append((args.config, args.checkpoint, Path(args.checkpoint).stem))
    if args.demo:
        from . import demo

        members.append((demo.CONFIG, demo.WEIGHTS, "demo"))
    for model_id in args.model or []:
        from .pretrained import fetch

        members.append((*fetch(model_id, progress=not args.quiet), model_id))
    for config, checkpoint in getattr(args, "member", None) or []:
        members.append((config, checkpoint, Path(checkpoint).stem))
    if not members:
        raise ValueError(NO_MODEL)
    return members


def load_separators(args, **options) -> list:
    """A Separator for each model the options give, with the device and precision checked before any loads."""
    from .device import resolve_device, resolve_precision
    from .separate import Separator

    device = resolve_device(args.device)
    resolve_precision(args.precision, device)
    members = model_files(args)
    if args.lora and len(members) > 1:
        raise ValueError("--lora adapts one model: leave it out of ensembles")
    separators = []
    for config, checkpoint, name in members:
        if args.lora:
            from .lora import adapted_checkpoint

            checkpoint = adapted_checkpoint(config, checkpoint, args.lora)
        separators.append(Separator.from_files(config, checkpoint, args.model_type, device=device,
                                               precision=args.precision, batch_size=args.batch_size, name=name,
                                               **options))
    return separators


def load_separator(args, **options):
    """The one Separator a command's model options give."""
    separators = load_separators(args, **options)
    if len(separators) > 1:
        raise ValueError(f"{args.command} takes one model, got {len(separators)}: give one of -c/-m, --demo or -n ID")
    return separators[0]


def load_separate_model(args):
    """The Separator of `separate`'s options, or an EnsembleSeparator for several models, --shifts or --preset."""
    ensemble_name = None
    if args.preset:
        from .presets import get_preset

        preset = get_preset(args.preset)
        if args.model or args.config or args.checkpoint or args.demo or args.member:
            raise ValueError("--preset gives the models: leave out -n, -c/-m, --demo and --member")
        args.model, ensemble_name = preset["models"], args.preset
        args.ensemble = args.ensemble or preset["algorithm"]
        args.weights = args.weights or (",".join(map(str, preset["weights"])) if preset.get("weights") else None)
    try:
        weights = [float(weight) for weight in args.weights.split(",")] if args.weights else None
    except ValueError:
        raise ValueError(f"--weights takes numbers separated by commas, like 2,1,1; got {args.weights!r}") from None
    count = model_count(args)
    if count == 1 and (args.ensemble or weights):
        raise ValueError("--ensemble and --weights combine several models: add models with -n ID or --member")
    algorithm = args.ensemble or "mean"
    if count > 1:
        from .ensemble import check_weights

        check_weights(algorithm, weights, count)  # before any download
    separators = load_separators(args, chunk_size=args.chunk_size, num_overlap=args.overlap, tta=args.tta)
    if len(separators) == 1 and args.shifts == 1:
        return separators[0]
    from .ensemble import EnsembleSeparator

    return EnsembleSeparator(separators, algorithm, weights, shifts=args.shifts,
                             name=ensemble_name if len(separators) > 1 else separators[0].name)


def model_count(args) -> int:
    """How many models the options name (without downloading any)."""
    return (bool(args.config or args.checkpoint) + args.demo + len(args.model or [])
            + len(getattr(args, "member", None) or []))


def onnx_separator(args):
    """The Separator of `separate --backend onnxruntime`: the model and its settings come from --onnx."""
    from .export import onnx_separator

    if not args.onnx:
        raise ValueError("--backend onnxruntime needs --onnx MODEL.onnx (made by `bs-roformer export`)")
    if args.model or args.config or args.checkpoint or args.demo:
        raise ValueError("--backend onnxruntime takes the model from --onnx: leave out -n, -c, -m and --demo")
    if args.precision not in ("auto", "fp32"):
        raise ValueError("an ONNX model's precision is fixed at export (`bs-roformer export --fp16`): "
                         "leave out --precision")
    return onnx_separator(args.onnx, args.onnx_provider, chunk_size=args.chunk_size, num_overlap=args.overlap,
                          batch_size=args.batch_size, tta=args.tta)


def separate_command(args) -> int:
    """Separate the inputs, in this process or, under torchrun, in every rank's share of them (library.py): rank 0
    lists the files and reports, and the ledger in OUTPUT/.ledger makes every run resumable."""
    from .audio import check_template
    from .library import Job, separate_tracks

    check_template(args.filename)
    if args.onnx and args.backend != "onnxruntime":
        raise ValueError("--onnx runs with --backend onnxruntime")
    job = Job.from_environment()
    tracks, problems = input_tracks(args) if job.rank == 0 else (None, [])
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if job.rank == 0 and not tracks:
        print("error: nothing to separate", file=sys.stderr)
        return 1
    args.device = job.device(args.device)
    separator = onnx_separator(args) if args.backend == "onnxruntime" else load_separate_model(args)
    names = separator.output_names(args.stems.split(",") if args.stems else None, args.instrumental)
    if job.rank == 0:
        check_distinct_outputs(separator, tracks, args.output, args.filename, args.format, names)
        if not args.quiet:
            print(separator.describe(), file=sys.stderr)
    return separate_tracks(separator, tracks, names, args, job, failed=len(problems))


def input_tracks(args) -> tuple[list, list[str]]:
    """The tracks to separate from INPUT and --files-from (the demo clip for --demo with neither), and the inputs
    that are not."""
    from .audio import find_audio
    from .library import listed_tracks

    inputs = args.inputs
    if not inputs and not args.files_from:
        if not args.demo:
            raise ValueError("give the audio files or folders to separate (or a list of files with --files-from)")
        from . import demo

        inputs = [demo.CLIP]
    tracks, problems = find_audio(inputs, exclude=args.output) if inputs else ([], [])
    if args.files_from:
        listed, unlisted = listed_tracks(args.files_from)
        tracks, problems = tracks + listed, problems + unlisted
    return tracks, problems


def check_distinct_outputs(separator, tracks, out_dir: Path, template: str, output_format: str, names: list[str]):
    """Refuse, before any work, a run in which two inputs would write the same file."""
    writers = {}
    for track in tracks:
        for path in separator.output_paths(track, out_dir, template, output_format, names).values():
            if path in writers:
                raise ValueError(f"{writers[path]} and {track.path} would both write {path}: keep the input folders "
                                 "apart with {relpath} in --filename, or separate them into different -o folders")
            writers[path] = track.path


def evaluate_command(args) -> int:
    from . import evaluate

    evaluate.check_outputs(args.json, args.csv, args.plot)  # before the work, not after it
    if args.estimates:
        if not (args.references or args.data):
            raise ValueError("--estimates needs --references (the test set the estimates were made from)")
        results, problems = evaluate.evaluate_estimates(args.references or args.data, args.estimates,
                                                        progress=not args.quiet)
    else:
        if not args.data:
            raise ValueError("give --data (and the model) to separate and score a test set, "
                             "or --estimates and --references to score stems on disk")
        separator = load_separator(args)
        if not args.quiet:
            print(separator.describe(), file=sys.stderr)
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
    from .device import resolve_device
    from .train import RunFinished, train

    config = load_config(args.config)
    config["training"] = dict(config.get("training") or {})
    msst_flags = ("dataset_type", "metric_for_scheduler", "metrics", "seed", "num_workers", "use_standard_loss", "loss",
                  *(f"{name}_coef" for name in LOSSES))
    for key in msst_flags:
        if getattr(args, key, None) is not None:  # MSST passes these on the command line
            config["training"][key] = getattr(args, key)
    init = args.init
    if init and not Path(init).exists():  # not a file: a published model's id
        from .pretrained import fetch

        init = fetch(init, progress=not args.quiet)[1]
    main_process = int(os.environ.get("RANK", 0)) == 0  # under torchrun, one report
    try:
        record = train(config, args.data, args.out, resume=args.resume, overwrite=args.overwrite,
                       valid_dir=args.valid, init_checkpoint=init, init_tolerant=args.init_tolerant,
                       freeze_prefixes=args.freeze, lora=args.lora, lora_checkpoint=args.lora_checkpoint,
                       model_type=args.model_type,
                       device=resolve_device(args.device), precision=args.precision, progress=not args.quiet,
                       report=lambda line: print(line, file=sys.stderr) if main_process else None)
    except RunFinished as finished:
        print(f"nothing to do: {finished}")
        return 0
    except KeyboardInterrupt:
        print("bs-roformer train: interrupted before a checkpoint could be written", file=sys.stderr)
        return 130
    if record.get("interrupted"):
        if main_process:
            print(f"interrupted at step {record['step']}; {args.out}/last.ckpt written: continue with --resume",
                  file=sys.stderr)
        return 130
    if main_process:
        print(f"finished: optimizer step {record['step']}, epoch {record.get('epoch', 0) + 1}; checkpoints and "
              f"metrics.jsonl in {args.out}")
    return 0


def models_command(args) -> int:
    from .pretrained import list_models, models_table

    if args.presets:
        from .presets import PRESETS, presets_table

        if args.json:
            import json

            print(json.dumps(PRESETS, indent=1))
        else:
            print(presets_table())
        return 0

    entries = list_models(stem=args.stem, architecture=args.arch)
    if args.json:
        import json

        print(json.dumps(entries, indent=1, ensure_ascii=False))
    else:
        print(models_table(entries))
    return 0


def pull_command(args) -> int:
    from .pretrained import fetch

    for model_id in args.ids:
        config, checkpoint = fetch(model_id, progress=not args.quiet)
        print(f"{model_id}: {checkpoint} (config {config})")
    return 0


def export_command(args) -> int:
    import json

    from .export import export_files

    members = model_files(args)
    if len(members) > 1:
        raise ValueError(f"export takes one model, got {len(members)}")
    config, checkpoint, name = members[0]
    metadata = export_files(config, checkpoint, args.output, source_id=name if args.model or args.demo else None,
                            model_type=args.model_type, chunk_size=args.chunk_size, opset=args.opset, fp16=args.fp16,
                            overwrite=args.overwrite)
    print(f"wrote {args.output}: {metadata['model_type']}, stems {', '.join(json.loads(metadata['stems']))}, "
          f"chunks of {metadata['chunk_size']} samples at {metadata['sample_rate']} Hz, {metadata['precision']}")
    return 0


def web_command(args) -> int:
    try:
        import fastapi, matplotlib, uvicorn  # noqa: F401, E401  (the web extra)
    except ImportError as error:
        raise ValueError(f"the web page needs the web extra ({error.name} is missing): "
                         'pip install -e ".[web]"') from None
    from .web import serve

    serve(args.host, args.port, args.max_upload_mb)
    return 0


def synth_command(args) -> int:
    from .data.synth import write_dataset

    folders = write_dataset(args.out, args.tracks, args.seconds, args.seed, jobs=args.jobs)
    print(f"wrote {len(folders)} tracks of {args.seconds:g} s (vocals, drums, bass, other, mixture) to {args.out}")
    return 0


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


EPILOG = """examples:
  bs-roformer separate --demo --instrumental          the shipped demo model on its demo clip
  bs-roformer models --stem vocals                     published models, by name
  bs-roformer separate song.flac -n kim-mel-vocals --instrumental
  bs-roformer separate song.flac -c config.yaml -m model.ckpt --instrumental
  bs-roformer inspect model.ckpt --yaml > config.yaml  a config for a checkpoint that came without one

Models: -n ID names a published model (downloaded, sha256-checked and cached on first use); -c/-m give an MSST-style
YAML config and its checkpoint; --demo is a small model shipped in the package, trained on synthetic songs."""


def add_model_options(parser: argparse.ArgumentParser):
    """-n/-c/-m/--demo and how the model runs: the options separate and evaluate share."""
    parser.add_argument("-n", "--model", metavar="ID", action="append", help="a published model by name "
                        "(`bs-roformer models`), downloaded and verified on first use; separate takes several "
                        "(an ensemble)")
    parser.add_argument("-c", "--config", help="the model's YAML config (MSST format)")
    parser.add_argument("-m", "--checkpoint", help="the model's weights (.ckpt/.pth/.safetensors)")
    parser.add_argument("--demo", action="store_true", help="use the small demo model shipped in the package")
    parser.add_argument("--lora", metavar="ADAPTER", help="merge this LoRA adapter (loralib keys) into the weights; "
                        "the config's lora: section gives its lora_alpha")
    parser.add_argument("--model-type", help="override the config's training.model_type (bs_roformer, "
                        "mel_band_roformer, bs_roformer_experimental, mel_band_roformer_experimental, bs_conformer, "
                        "mel_band_conformer)")
    parser.add_argument("-d", "--device", default="auto", help="auto (CUDA, then MPS, then the CPU), cpu, cuda, "
                        "cuda:N or mps")
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16. auto: on CUDA fp16 when the "
                        "config's training.use_amp is true (as MSST), else fp32; on the CPU bf16 only where the CPU "
                        "has native bf16 (AVX512-BF16 or AMX), else fp32")
    parser.add_argument("-b", "--batch-size", type=positive_int, help="chunks per model call (default: the "
                        "config's inference.batch_size, else 1)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="bs-roformer", description="BS-RoFormer and Mel-Band RoFormer: separate "
                                     "songs into stems, score, train.", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    inspect = commands.add_parser("inspect", help="print the model configuration a checkpoint implies",
                                  formatter_class=formatter)
    inspect.add_argument("checkpoint", help=".ckpt/.pth/.pt or .safetensors file")
    inspect.add_argument("--yaml", action="store_true", help="print it as an MSST YAML config that loads with "
                         "this checkpoint (settings the weights do not record are marked)")
    inspect.set_defaults(run=inspect_command)

    separate = commands.add_parser("separate", help="split songs into stems", formatter_class=formatter)
    separate.add_argument("inputs", nargs="*", metavar="INPUT", help="audio files or folders (searched recursively, "
                          "leaving out the output folder); with --demo and no INPUT, the demo clip")
    add_model_options(separate)
    separate.add_argument("-o", "--output", type=Path, default=Path("separated"), help="output folder")
    separate.add_argument("--overlap", type=positive_int, help="chunks covering each sample (default: the config's "
                          "inference.num_overlap, else 2)")
    separate.add_argument("--chunk-size", type=positive_int, help="chunk length in samples (default: the config's "
                          "inference.chunk_size, else audio.chunk_size)")
    separate.add_argument("--tta", action="store_true", help="average with channel-swapped and polarity-inverted "
                          "passes (3x the time)")
    separate.add_argument("--member", nargs=2, action="append", metavar=("CONFIG", "CHECKPOINT"), help="another "
                          "local model for an ensemble (repeatable; with -c/-m, --demo and -n ID)")
    separate.add_argument("--ensemble", metavar="ALGORITHM", help="how several models' stems are combined: mean, "
                          "median, min, max (waveforms), mean_spec, median_spec, min_spec, max_spec (spectrograms; "
                          "the README defines each). Default: mean")
    separate.add_argument("--weights", help="one weight per model for mean and mean_spec, comma-separated "
                          "(e.g. 2,1,1), in the order -c/-m, --demo, -n, --member")
    separate.add_argument("--shifts", type=positive_int, default=1, help="average K passes, the mix delayed by "
                          "k/K of a chunk step for k = 0..K-1 (K x the time)")
    separate.add_argument("--preset", help="a named ensemble of published models (`bs-roformer models --presets`)")
    separate.add_argument("--stems", help="comma-separated outputs to write: the model's stems and/or instrumental "
                          "(default: all the model's stems)")
    separate.add_argument("--instrumental", action="store_true", help="also write the mixture minus the target stem")
    separate.add_argument("--format", default="wav32f", choices=sorted(OUTPUT_FORMATS),
                          help="wav16, wav24, wav32f (32-bit float), flac16, flac24")
    separate.add_argument("--filename", default=DEFAULT_TEMPLATE, help="output path template under OUTPUT, with "
                          f"{', '.join('{' + field + '}' for field in TEMPLATE_FIELDS)}: {{track}} is the file's "
                          "name (its folder's for mixture.*), {relpath} its path under the INPUT folder")
    separate.add_argument("--overwrite", action="store_true", help="replace existing outputs, and redo the files "
                          "the ledger (OUTPUT/.ledger) records as done (default: keep them, and write only the "
                          "missing ones)")
    separate.add_argument("--files-from", metavar="LIST", help="also separate the files named in LIST, one path a "
                          "line (- reads standard input); {relpath} is then the path under their common folder")
    separate.add_argument("--backend", default="torch", choices=("torch", "onnxruntime"),
                          help="run the model in PyTorch (from -n, -c/-m or --demo) or an exported --onnx model")
    separate.add_argument("--onnx", type=Path, help="the model exported by `bs-roformer export` (onnxruntime backend)")
    separate.add_argument("--onnx-provider", default="cpu",
                          help="onnxruntime execution provider: cpu, cuda, tensorrt, directml, coreml")
    separate.set_defaults(run=separate_command)

    export = commands.add_parser("export", help="export a model to ONNX, STFT and iSTFT inside the graph",
                                 formatter_class=formatter)
    export.add_argument("-n", "--model", metavar="ID", action="append",
                        help="a published model by name (`bs-roformer models`)")
    export.add_argument("-c", "--config", help="the model's YAML config (MSST format)")
    export.add_argument("-m", "--checkpoint", help="the model's weights (.ckpt/.pth/.safetensors)")
    export.add_argument("--demo", action="store_true", help="export the small demo model shipped in the package")
    export.add_argument("--model-type", help="override the config's training.model_type")
    export.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")
    export.add_argument("--opset", type=positive_int, help="ONNX opset (default 18, the lowest it needs)")
    export.add_argument("--fp16", action="store_true",
                        help="the model between STFT and iSTFT in float16 (STFT, masks and iSTFT stay float32)")
    export.add_argument("--chunk-size", type=positive_int, help="samples per chunk, fixed in the graph (default: the "
                        "config's)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing output")
    export.add_argument("-q", "--quiet", action="store_true", help="no download progress bar")
    export.set_defaults(run=export_command)

    evaluate = commands.add_parser(
        "evaluate", formatter_class=formatter,
        help="score separations: global SDR, museval cSDR, SI-SDR, bleedless/fullness",
        description="Two modes: give a model (-c/-m or --demo) and --data to separate a test set and score it; or "
                    "give --estimates (stems on disk) and --references (or --data) to score them.")
    add_model_options(evaluate)
    evaluate.add_argument("--data", type=Path, help="test set in the MUSDB18-HQ layout (<track>/<stem>.wav); also "
                          "stands for --references")
    evaluate.add_argument("--estimates", type=Path, help="stems on disk to score (<track>/<stem>.wav)")
    evaluate.add_argument("--references", type=Path, help="the references for --estimates (MUSDB18-HQ layout)")
    evaluate.add_argument("--json", type=Path, help="write results and the per-stem summary as JSON")
    evaluate.add_argument("--csv", type=Path, help="write per-track, per-stem results as CSV")
    evaluate.add_argument("--plot", type=Path, help="write a PNG of per-track SDR per stem (needs matplotlib)")
    evaluate.set_defaults(run=evaluate_command)

    train = commands.add_parser("train", help="train or fine-tune a model (MSST-style YAML config)",
                                formatter_class=formatter)
    train.add_argument("-c", "--config", required=True, help="YAML config: model, training, audio, augmentations")
    train.add_argument("--data", type=Path, nargs="+", required=True,
                       help="training data: track folders (MUSDB18-HQ layout), a folder per stem (--dataset-type 2) "
                       "or a CSV file (3); several are drawn from as one set")
    train.add_argument("--out", type=Path, required=True, help="run folder: checkpoints and metrics.jsonl")
    train.add_argument("--valid", type=Path, nargs="+",
                       help="validation tracks (MUSDB18-HQ layout; one folder or several), scored at each epoch's end")
    train.add_argument("--resume", action="store_true", help="continue from OUT/last.ckpt exactly")
    train.add_argument("--init", help="start from these weights (fine-tuning): a checkpoint file or a published "
                       "model's id")
    train.add_argument("--overwrite", action="store_true", help="replace the run already in OUT")
    train.add_argument("--model-type", help="the model type, as MSST's --model_type (for configs without "
                       "training.model_type): bs_roformer, mel_band_roformer, bs_roformer_experimental, "
                       "mel_band_roformer_experimental, bs_conformer, mel_band_conformer")
    train.add_argument("--dataset-type", type=int, choices=(1, 2, 3, 4, 6, 7),
                       help="MSST's dataset types: 1 random remix (default), 2 a folder per stem, 3 CSV, "
                       "4 aligned, 6 aligned with mixture.wav, 7 class-balanced")
    train.add_argument("--metric-for-scheduler", choices=METRICS,
                       help="validation metric for best.ckpt and ReduceLROnPlateau (default sdr)")
    train.add_argument("--metrics", nargs="+", choices=METRICS, help="validation metrics, logged per stem "
                       "(default sdr; the scheduler's metric is always added)")
    train.add_argument("--seed", type=int, help="random seed of the data, initialisation and dropout (default 0)")
    train.add_argument("--num-workers", type=int, help="DataLoader worker processes (default 0)")
    train.add_argument("--use-standard-loss", action="store_true", default=None,
                       help="train on --loss instead of the model's own loss (MSST's --use_standard_loss)")
    train.add_argument("--loss", nargs="+", metavar="LOSS",
                       help="MSST's loss terms, summed with their --<loss>-coef (default masked_loss, which reads "
                       "training.q and coarse_loss_clip): masked_loss, mse_loss, l1_loss, multistft_loss (needs the "
                       "losses extra), spec_masked_loss, spec_rmse_loss")
    for name in LOSSES:
        default = Training.__dataclass_fields__[f"{name}_coef"].default
        train.add_argument(f"--{name.replace('_', '-')}-coef", type=float, dest=f"{name}_coef", metavar="W",
                           default=argparse.SUPPRESS, help=f"the weight of {name}, MSST's --{name}_coef "
                           f"(default: {default})")
    train.add_argument("--init-tolerant", action="store_true",
                       help="with --init: crop or zero-pad tensors of another shape (MSST's warm start), reported")
    train.add_argument("--freeze", nargs="+", metavar="PREFIX", help="do not train parameters with these name prefixes")
    train.add_argument("--lora", action="store_true",
                       help="train only LoRA adapters on the Linear layers (the config's lora: r, lora_alpha, "
                       "lora_dropout); checkpoints' state_dict holds the adapters")
    train.add_argument("--lora-checkpoint", metavar="ADAPTER", help="with --lora: start the adapters from this "
                       "loralib-format file (MSST's --lora_checkpoint_loralib), on the --init weights")
    train.add_argument("-d", "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    train.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16. auto follows training.use_amp: "
                       "bf16 where the hardware has it, fp16 on GPUs without bf16, fp32 on a CPU without native bf16 "
                       "(there bf16 is slower)")
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=train_command)

    models = commands.add_parser("models", help="list the published models that can be used by name (-n ID)",
                                 formatter_class=formatter)
    models.add_argument("--stem", help="only models with this stem (vocals, instrum, drums, ...)")
    models.add_argument("--arch", help="only this architecture: bs_roformer (bs) or mel_band_roformer (mel)")
    models.add_argument("--json", action="store_true", help="print the entries as JSON, with a 'cached' field")
    models.add_argument("--presets", action="store_true", help="list the ensemble presets (--preset NAME) and "
                        "their models' published scores")
    models.set_defaults(run=models_command)

    pull = commands.add_parser("pull", help="download published models into the cache (verified by sha256)",
                               formatter_class=formatter)
    pull.add_argument("ids", nargs="+", metavar="ID", help="model ids, as `bs-roformer models` lists them")
    pull.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pull.set_defaults(run=pull_command)

    web = commands.add_parser("web", help="a local web page: upload songs, separate, listen, download",
                              formatter_class=formatter)
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only; "
                     "another address exposes the page, with no login, to the network)")
    web.add_argument("--port", type=int, default=7860, help="port to listen on")
    web.add_argument("--max-upload-mb", type=float, default=1024, help="largest upload accepted, in MB")
    web.set_defaults(run=web_command)

    synth = commands.add_parser("synth", help="write synthetic multi-stem songs in the MUSDB18-HQ layout",
                                formatter_class=formatter)
    synth.add_argument("--out", type=Path, required=True, help="output folder (one folder per track)")
    synth.add_argument("--tracks", type=positive_int, default=10, help="number of songs")
    synth.add_argument("--seconds", type=float, default=10.0, help="length of each song")
    synth.add_argument("--seed", type=int, default=0, help="same seed, same songs")
    synth.add_argument("-j", "--jobs", type=positive_int, default=1, help="processes writing songs (the same songs "
                       "for any number)")
    synth.set_defaults(run=synth_command)
    return parser


def print_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as one `warning: ...` line, without Python's source location."""
    print(f"warning: {message}", file=sys.stderr)


# compat: MSST's train.py flags, as MSST users type them, and ours of the same meaning
MSST_TRAIN_FLAGS = {
    "--model_type": "--model-type", "--config_path": "--config", "--data_path": "--data", "--valid_path": "--valid",
    "--results_path": "--out", "--start_check_point": "--init", "--dataset_type": "--dataset-type",
    "--metric_for_scheduler": "--metric-for-scheduler", "--num_workers": "--num-workers",
    "--use_standard_loss": "--use-standard-loss", "--freeze_layers": "--freeze", "--train_lora_loralib": "--lora",
    "--lora_checkpoint_loralib": "--lora-checkpoint",
    **{f"--{name}_coef": f"--{name.replace('_', '-')}-coef" for name in LOSSES},
}


def with_our_flag_names(argv: list[str]) -> list[str]:
    """`train`'s arguments with MSST's flag spellings (`--model_type x`, `--model_type=x`) replaced by ours."""
    if not argv or argv[0] != "train":
        return argv
    renamed = []
    for argument in argv:
        flag, equals, value = argument.partition("=")
        renamed.append(MSST_TRAIN_FLAGS.get(flag, flag) + equals + value if flag.startswith("--") else argument)
    return renamed


def main(argv=None) -> int:
    args = build_parser().parse_args(with_our_flag_names(sys.argv[1:] if argv is None else list(argv)))
    if argv is None and args.command in ("separate", "evaluate", "web"):
        use_fast_allocator_settings()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = print_warning
            return args.run(args)
    except (OSError, ValueError, AudioError) as error:  # OSError: also failed downloads and unwritable paths
        print(f"bs-roformer {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"bs-roformer {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
