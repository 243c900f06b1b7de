"""Make the demo shipped in `src/bs_roformer/demo/`: train the vocal model on synthetic songs, store its weights, write
the demo clip, and score the stored model on held-out songs. Every step is this package's own code.

    python scripts/make_demo.py [--work runs/demo]

Takes about an hour and a half on a 2-core CPU (OMP_NUM_THREADS=2); the steps before the training are skipped when
their output exists, and an interrupted training resumes from its last checkpoint.
"""

import argparse
import shutil
from pathlib import Path

import soundfile
from safetensors.torch import save_file

from bs_roformer import demo
from bs_roformer.checkpoint import load_state_dict
from bs_roformer.config import load_config
from bs_roformer.data.synth import synthesize_track, write_dataset
from bs_roformer.evaluate import evaluate_model, format_table, summarize
from bs_roformer.separate import Separator
from bs_roformer.train import train

CONFIG = Path(__file__).parents[1] / "configs" / "demo_vocals.yaml"
SETS = {"train": (60, 10), "valid": (4, 11), "test": (10, 12)}  # name: (tracks of 10 s, synth seed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/demo"), help="data and training run folder")
    work = parser.parse_args().work

    for name, (tracks, seed) in SETS.items():
        if not (work / name).is_dir():
            write_dataset(work / name, tracks, seconds=10, seed=seed)
    run = work / "run"
    train(load_config(CONFIG), work / "train", run, valid_dir=work / "valid", resume=(run / "last.ckpt").is_file())

    # the EMA weights of the best validation step, in fp16: half the size, no audible difference
    weights = {key: value.half().contiguous() for key, value in load_state_dict(run / "best.ckpt").items()}
    save_file(weights, str(demo.WEIGHTS))
    shutil.copyfile(CONFIG, demo.CONFIG)
    mixture = sum(synthesize_track(demo.CLIP_SEED, seconds=10).values())
    soundfile.write(str(demo.CLIP), 0.8 * mixture.T / abs(mixture).max(), 44100, subtype="PCM_16")

    results, problems = evaluate_model(Separator.demo(device="cpu"), work / "test")
    for problem in problems:
        print(f"warning: {problem}")
    print(format_table(results, summarize(results)))


if __name__ == "__main__":
    main()
