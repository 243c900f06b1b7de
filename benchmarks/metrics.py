"""museval-compatible cSDR: our time against the museval package's on one 3-minute stereo 4-stem track.

    python benchmarks/metrics.py [--seconds 180]

museval is a test-only dependency (pip install -e '.[test]'). Its package __init__ imports stempeg, which needs
ffmpeg, so its metrics module is loaded on its own, and `bss_eval` is called as `museval.evaluate` calls it in v4
mode (filters over the whole track, 1 s windows and hop).
"""

import argparse
import importlib.metadata
import importlib.util
import time
from pathlib import Path

import numpy as np
import torch

from bs_roformer.metrics import framewise_sdr


def museval_metrics():
    spec = importlib.util.find_spec("museval")
    path = Path(spec.submodule_search_locations[0]) / "metrics.py"
    module_spec = importlib.util.spec_from_file_location("museval_metrics", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=180.0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    samples = int(args.seconds * 44100)
    references = rng.standard_normal((4, samples, 2)) * 0.1
    estimates = references + rng.standard_normal((4, samples, 2)) * 0.03 + 0.02 * references[[1, 2, 3, 0]]
    start = time.perf_counter()
    theirs = museval_metrics().bss_eval(references, estimates, window=44100, hop=44100, framewise_filters=False,
                                        bsseval_sources_version=False)[0]
    museval_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ours = framewise_sdr(np.moveaxis(references, 1, 2), np.moveaxis(estimates, 1, 2)).numpy()
    our_seconds = time.perf_counter() - start
    print(f"{args.seconds:g} s stereo, 4 stems, 1 s frames ({ours.shape[1]} per stem), 2 threads\n")
    print("| implementation | seconds | speed-up |\n|---|---|---|")
    print(f"| museval {importlib.metadata.version('museval')} bss_eval v4 | {museval_seconds:.2f} | 1.00x |")
    print(f"| bs_roformer.metrics.framewise_sdr | {our_seconds:.3f} | {museval_seconds / our_seconds:.0f}x |")
    print(f"\nmax |difference| over all frames: {np.nanmax(np.abs(ours - theirs)):.1e} dB; median per stem: ours "
          f"{np.round(np.nanmedian(ours, 1), 3).tolist()}, museval {np.round(np.nanmedian(theirs, 1), 3).tolist()}")


if __name__ == "__main__":
    main()
