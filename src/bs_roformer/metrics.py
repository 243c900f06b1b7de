"""The metrics music source separation reports, on (..., channels, samples) tensors or arrays.

- `global_sdr` (uSDR, the challenges' and MSST's "sdr"): 10 log10 of reference energy over error energy, over the
  whole track and all channels (eps 1e-8); tables report the mean over tracks.
- `framewise_sdr` / `museval_sdr` (cSDR, the papers' MUSDB18 tables): BSSEval v4 as the `museval` package computes
  it, on 1 s frames with a 1 s hop, median over frames; tables report the median over tracks. In v4 ("images" mode)
  the frame's SDR is the energy of the reference image over the energy of (estimate - reference image): the
  512-tap distortion filters that BSSEval fits only split that error into spatial, interference and artifact
  parts (ISR, SIR, SAR), so SDR needs no filter and is computed here directly, hundreds of times faster.
  Frames where any reference or estimate of the track is silent are NaN, as in museval.
- `si_sdr`: scale-invariant SDR (Le Roux et al. 2019).
- A perfect estimate (error energy below GLOBAL_SDR_EPS) gets a finite score in every SDR: the error energy is floored
  at the eps, which caps each SDR at 10 log10(signal energy / 1e-8) (about 110 dB for a loud track).
- `bleedless_fullness`: the community's (MVSEP, MSST) spectral scores: magnitude STFT (n_fft 4096, hop 1024, Hann,
  zero padding at the borders), 512 Slaney Mel bands, dB of magnitudes floored 80 dB below the signal's maximum;
  d = estimate dB - reference dB; bleedless = 100 / (1 + mean of the positive d), fullness =
  100 / (1 + |mean of the negative d|). Higher is better for both.
"""

import numpy as np
import torch

from .audio import fit_length
from .mel import slaney_mel_filterbank

GLOBAL_SDR_EPS = 1e-8


def _as_tensor(x) -> torch.Tensor:
    return torch.as_tensor(x).to(torch.float64)


def global_sdr(reference, estimate, eps: float = GLOBAL_SDR_EPS) -> torch.Tensor:
    """(..., channels, samples) -> (...): 10 log10((sum ref^2 + eps) / (sum (ref - est)^2 + eps))."""
    reference, estimate = _as_tensor(reference), _as_tensor(estimate)
    signal = reference.pow(2).sum(dim=(-2, -1)) + eps
    error = (reference - estimate).pow(2).sum(dim=(-2, -1)) + eps
    return 10 * torch.log10(signal / error)


def si_sdr(reference, estimate, zero_mean: bool = False) -> torch.Tensor:
    """(..., channels, samples) -> (...): scale-invariant SDR over all channels of each item."""
    reference = _as_tensor(reference).flatten(-2)
    estimate = _as_tensor(estimate).flatten(-2)
    if zero_mean:
        reference = reference - reference.mean(dim=-1, keepdim=True)
        estimate = estimate - estimate.mean(dim=-1, keepdim=True)
    scale = (estimate * reference).sum(-1, keepdim=True) / reference.pow(2).sum(-1, keepdim=True)
    target = scale * reference
    error = (target - estimate).pow(2).sum(-1).clamp(min=GLOBAL_SDR_EPS)
    return 10 * torch.log10(target.pow(2).sum(-1) / error)


def framewise_sdr(references, estimates, window: int = 44100, hop: int = 44100) -> torch.Tensor:
    """BSSEval v4 SDR per frame, as `museval.evaluate`: references and estimates (sources, channels, samples) of
    one track (estimates are cut or zero-padded to the references' length) -> (sources, frames), NaN where any
    source's reference or estimate is silent in that frame (museval's test: every sample's channel sum is 0)."""
    references, estimates = _as_tensor(references), _as_tensor(estimates)
    length = references.shape[-1]
    estimates = fit_length(estimates, length)
    frames = int(np.floor((length - window + hop) / hop)) if window < length else 1
    result = torch.full((references.shape[0], frames), float("nan"), dtype=torch.float64)
    for frame in range(frames):
        start, stop = frame * hop, min(frame * hop + window, length)
        ref, est = references[..., start:stop], estimates[..., start:stop]
        if _any_silent(ref) or _any_silent(est):
            continue
        signal = ref.pow(2).sum(dim=(-2, -1))
        error = (est - ref).pow(2).sum(dim=(-2, -1)).clamp(min=GLOBAL_SDR_EPS)
        result[:, frame] = 10 * torch.log10(signal / error)
    return result


def _any_silent(sources: torch.Tensor) -> bool:
    return bool((sources.sum(dim=-2) == 0).all(dim=-1).any())


def museval_sdr(references, estimates, window: int = 44100, hop: int = 44100) -> torch.Tensor:
    """Per source, the median over frames (ignoring NaN frames) of `framewise_sdr`: a track's cSDR."""
    return framewise_sdr(references, estimates, window, hop).nanmedian(dim=-1).values


def _mel_db(audio: torch.Tensor, mel: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    spec = torch.stft(audio, n_fft=n_fft, hop_length=hop, window=torch.hann_window(n_fft, dtype=audio.dtype),
                      center=True, pad_mode="constant", return_complex=True).abs()
    db = 20 * torch.log10((mel @ spec).clamp(min=1e-10))
    return db.clamp(min=db.max() - 80.0)


def bleedless_fullness(reference, estimate, sample_rate: int = 44100, n_fft: int = 4096, hop: int = 1024,
                       num_bands: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., channels, samples) reference and estimate -> (bleedless, fullness), each shaped (...)."""
    reference, estimate = torch.as_tensor(reference).float(), torch.as_tensor(estimate).float()
    mel = torch.from_numpy(slaney_mel_filterbank(sample_rate, n_fft, num_bands))
    batch = reference.shape[:-2]
    scores = []
    for ref, est in zip(reference.reshape(-1, *reference.shape[-2:]), estimate.reshape(-1, *estimate.shape[-2:])):
        difference = _mel_db(est, mel, n_fft, hop) - _mel_db(ref, mel, n_fft, hop)
        positive, negative = difference[difference > 0], difference[difference < 0]
        above = positive.mean().item() if positive.numel() else 0.0
        below = negative.mean().item() if negative.numel() else 0.0
        scores.append((100 / (1 + above), 100 / (1 - below)))
    bleedless, fullness = torch.tensor(scores, dtype=torch.float64).unbind(-1)
    return bleedless.reshape(batch), fullness.reshape(batch)


def l1_freq(reference, estimate, n_fft: int = 2048, hop: int = 1024) -> torch.Tensor:
    """(..., channels, samples) -> (...): MSST's `l1_freq`, 100 / (1 + 10 x the mean absolute difference of the STFT
    magnitudes) (rectangular window, centred frames, reflect padding: torch.stft's defaults, as MSST calls it). Higher is better."""
    reference, estimate = torch.as_tensor(reference).float(), torch.as_tensor(estimate).float()
    batch = reference.shape[:-2]
    flat = [tensor.reshape(-1, *tensor.shape[-2:]) for tensor in (reference, estimate)]
    scores = []
    for ref, est in zip(*flat):
        window = torch.ones(n_fft)  # what torch.stft uses (with a warning) when MSST passes none
        magnitudes = [torch.stft(x, n_fft, hop, window=window, return_complex=True).abs() for x in (ref, est)]
        scores.append(100 / (1 + 10 * (magnitudes[1] - magnitudes[0]).abs().mean().item()))
    return torch.tensor(scores, dtype=torch.float64).reshape(batch)
