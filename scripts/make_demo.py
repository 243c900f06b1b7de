"""Make the demo shipped in `src/bs_roformer/demo/`: train the vocal model on synthetic songs, store its weights, write
the demo clip, and score the stored model on held-out songs. Every step is this package's own code.

    python scripts/make_demo.py --device cpu --install      # what made the shipped files

The files go to WORK/demo/ (config.yaml, vocals.safetensors, clip.flac, test_scores.json), and into the package with
--install. The shipped model took 65 minutes to train on a 2-core CPU (OMP_NUM_THREADS=2). The steps before the
training are skipped when their output exists, and an interrupted training resumes from its last checkpoint.
"""

import argparse
import os
import shutil
from pathlib import Path

import soundfile
from safetensors.torch import save_file

from bs_roformer import demo
from bs_roformer.checkpoint import load_state_dict
from bs_roformer.config import load_config
from bs_roformer.data.synth import synthesize_track, write_dataset
from bs_roformer.evaluate import evaluate_model, format_table, summarize, write_json
from bs_roformer.device import resolve_device
from bs_roformer.separate import Separator
from bs_roformer.train import train

CONFIG = Path(__file__).parents[1] / "configs" / "demo_vocals.yaml"
SETS = {"train": (60, 10), "valid": (4, 11), "test": (10, 12)}  # name: (tracks of 10 s, synth seed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/demo"), help="data, training run and demo files")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="processes writing the synthetic songs")
    parser.add_argument("--install", action="store_true", help="copy the demo files into the package")
    args = parser.parse_args()
    work, out, device = args.work, args.work / "demo", resolve_device(args.device)

    for name, (tracks, seed) in SETS.items():
        if not (work / name).is_dir():
            write_dataset(work / name, tracks, seconds=10, seed=seed, jobs=args.jobs)
    run = work / "run"
    train(load_config(args.config), work / "train", run, valid_dir=work / "valid", device=device,
          resume=(run / "last.ckpt").is_file())

    out.mkdir(parents=True, exist_ok=True)
    # the EMA weights of the best validation step, in fp16: half the size, no audible difference
    weights = {key: value.half().contiguous() for key, value in load_state_dict(run / "best.ckpt").items()}
    save_file(weights, str(out / demo.WEIGHTS.name))
    shutil.copyfile(args.config, out / demo.CONFIG.name)
    mixture = sum(synthesize_track(demo.CLIP_SEED, seconds=10).values())
    soundfile.write(str(out / demo.CLIP.name), 0.8 * mixture.T / abs(mixture).max(), 44100, subtype="PCM_16")

    separator = Separator.from_files(out / demo.CONFIG.name, out / demo.WEIGHTS.name, device=device)
    results, problems = evaluate_model(separator, work / "test")
    for problem in problems:
        print(f"warning: {problem}")
    summary = summarize(results)
    write_json(out / "test_scores.json", results, summary)
    print(format_table(results, summary))
    if args.install:
        for file in (demo.CONFIG, demo.WEIGHTS, demo.CLIP):
            shutil.copyfile(out / file.name, file)


if __name__ == "__main__":
    main()
