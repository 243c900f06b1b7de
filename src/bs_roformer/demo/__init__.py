"""The demo shipped inside the package, so that `bs-roformer separate --demo` works with no download.

`config.yaml` and `vocals.safetensors` are a small BS-RoFormer vocal model that this project's own training loop
trained on the synthetic songs of `bs-roformer synth` (`scripts/make_demo.py` made every file here); `clip.flac` is a
synthetic song it never saw. It separates synthetic songs well and real music poorly: it shows the pipeline, and it is
no substitute for a published model.
"""

from pathlib import Path

FOLDER = Path(__file__).parent
CONFIG = FOLDER / "config.yaml"
WEIGHTS = FOLDER / "vocals.safetensors"
CLIP = FOLDER / "clip.flac"
CLIP_SEED = 13_000  # the clip is the mixture of `synthesize_track(CLIP_SEED, 10 s)`, scaled to a peak of 0.8
