"""Metrics against their definitions and against the museval package (a test-only dependency)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from bs_roformer.metrics import bleedless_fullness, framewise_sdr, global_sdr, museval_sdr, si_sdr


def load_museval_metrics():
    """museval's metrics module, without its package __init__ (which imports stempeg, which needs ffmpeg)."""
    spec = importlib.util.find_spec("museval")
    if spec is None:
        pytest.skip("museval is not installed (pip install -e '.[test]')")
    path = Path(spec.submodule_search_locations[0]) / "metrics.py"
    module_spec = importlib.util.spec_from_file_location("museval_metrics", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_global_sdr_formula_and_batching():
    reference = torch.randn(3, 2, 1000)
    estimate = reference + 0.1 * torch.randn(3, 2, 1000)
    signal = reference.double().pow(2).sum(dim=(1, 2)) + 1e-8
    error = (reference - estimate).double().pow(2).sum(dim=(1, 2)) + 1e-8
    assert torch.allclose(global_sdr(reference, estimate), 10 * torch.log10(signal / error))
    assert global_sdr(torch.zeros(2, 10), torch.zeros(2, 10)) == 0  # silence against silence: 0 dB, not NaN


def test_si_sdr_ignores_scale():
    reference = torch.randn(2, 2, 5000)
    estimate = reference + 0.2 * torch.randn(2, 2, 5000)
    assert torch.allclose(si_sdr(reference, estimate), si_sdr(reference, 0.3 * estimate))
    assert not torch.allclose(global_sdr(reference, estimate), global_sdr(reference, 0.3 * estimate))


def test_museval_v4_sdr_agrees_to_float64_rounding():
    museval_metrics = load_museval_metrics()
    rng = np.random.default_rng(0)
    samples = 44100 * 6 + 777
    references = rng.standard_normal((4, samples, 2)) * 0.1
    references[1, 44100 * 2 : 44100 * 3] = 0  # a silent frame: NaN for every source there
    estimates = references + rng.standard_normal((4, samples, 2)) * 0.05 * np.arange(1, 5)[:, None, None]
    estimates[:, :, 1] += 0.03 * references[[1, 2, 3, 0], :, 0]  # some interference
    theirs = museval_metrics.bss_eval(references, estimates, window=44100, hop=44100, framewise_filters=False,
                                      bsseval_sources_version=False)[0]
    ours = framewise_sdr(np.moveaxis(references, 1, 2), np.moveaxis(estimates, 1, 2)).numpy()
    assert ours.shape == theirs.shape == (4, 6)
    assert np.array_equal(np.isnan(ours), np.isnan(theirs)) and np.isnan(ours).sum() == 4
    assert np.nanmax(np.abs(ours - theirs)) < 1e-12  # measured 1.8e-15 dB
    assert np.allclose(museval_sdr(np.moveaxis(references, 1, 2), np.moveaxis(estimates, 1, 2)),
                       np.nanmedian(theirs, axis=1), rtol=0, atol=1e-12)


def test_framewise_sdr_pads_short_estimates_and_handles_short_tracks():
    references = torch.randn(2, 2, 30000)
    frames = framewise_sdr(references, references[..., :20000] * 0.9)
    assert frames.shape == (2, 1)  # shorter than a window: one frame, as museval
    long = framewise_sdr(torch.randn(1, 2, 100_000), torch.randn(1, 2, 90_000))
    assert long.shape == (1, 2) and torch.isfinite(long).all()


def test_bleedless_and_fullness_respond_to_level_as_documented():
    """A louder estimate reads as bleed, a quieter one as lost fullness (the community's known caveat)."""
    reference = torch.randn(3, 2, 44100) * 0.1
    same = bleedless_fullness(reference, reference)
    louder = bleedless_fullness(reference, reference * 1.03)
    quieter = bleedless_fullness(reference, reference * 0.97)
    assert same[0].shape == (3,) and torch.allclose(same[0], torch.full((3,), 100.0, dtype=torch.float64))
    assert torch.allclose(louder[0], torch.tensor(100 / (1 + 20 * np.log10(1.03))), atol=0.1)
    assert torch.allclose(louder[1], torch.tensor(100.0, dtype=torch.float64))
    assert (quieter[1] < 85).all() and torch.allclose(quieter[0], torch.tensor(100.0, dtype=torch.float64))
