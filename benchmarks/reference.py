"""Shared by the benchmarks: the classic reference package, imported beside ours, and timing helpers.

The reference is `bs-roformer==0.3.10`, whose import name is ours too, so it lives in its own directory:

    pip install --target /tmp/refenv --no-deps bs-roformer==0.3.10 beartype rotary-embedding-torch librosa \\
        lazy_loader numba llvmlite joblib pooch audioread msgpack scikit-learn threadpoolctl platformdirs

(or point --reference / $BS_ROFORMER_REFERENCE elsewhere).
"""

import importlib
import os
import sys
import time

from bs_roformer.cli import ALLOCATOR_SETTINGS as TUNABLES
DEFAULT_REFERENCE = os.environ.get("BS_ROFORMER_REFERENCE", "/tmp/refenv")


def rerun_with_allocator_settings():
    """Both sides are timed with glibc keeping freed memory: without it they spend much of their time in page
    faults and timings swing 2x between runs."""
    if os.environ.get("GLIBC_TUNABLES") != TUNABLES:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "GLIBC_TUNABLES": TUNABLES})


def import_reference(path: str):
    """Import the classic package from `path` under its own name, then give `bs_roformer` back to ours."""
    path = os.path.abspath(path)
    own = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "bs_roformer"}
    for name in own:
        del sys.modules[name]
    sys.path.insert(0, path)
    try:
        reference = importlib.import_module("bs_roformer")
        if not reference.__file__.startswith(path):
            raise ImportError(f"bs_roformer was not found in {path}")
    finally:
        sys.path.remove(path)
        for name in [name for name in sys.modules if name.split(".")[0] == "bs_roformer"]:
            sys.modules[f"reference_{name}"] = sys.modules.pop(name)
        sys.modules.update(own)
    return reference


def require_reference(path: str):
    try:
        return import_reference(path)
    except ImportError as error:
        sys.exit(f"cannot import the reference package from {path} ({error}); see benchmarks/reference.py")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rss_mb(field: str = "VmHWM") -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise RuntimeError(field)
