"""The Slaney Mel filterbank, computed with librosa's float64 formulas (so band membership matches it bit for bit
without librosa): the Mel-Band RoFormer's bands, the bleedless/fullness metrics and checkpoint inspection use it."""

import numpy as np
import torch


def slaney_mel_filterbank(sample_rate: int, n_fft: int, num_bands: int) -> np.ndarray:
    """(num_bands, n_fft // 2 + 1) float32 weights of librosa's `filters.mel(sr, n_fft, n_mels)` (Slaney scale and
    area norm, fmin 0, fmax sr / 2), computed with the same float64 formulas."""

    def hz_to_mel(hz):
        hz = np.asanyarray(hz, dtype=np.float64)
        mel = hz / (200.0 / 3)
        log_region = hz >= 1000.0
        return np.where(log_region, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)

    def mel_to_hz(mel):
        hz = (200.0 / 3) * mel
        log_region = mel >= 15.0
        return np.where(log_region, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), hz)

    bin_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2.0), num_bands + 2))
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - bin_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    area_norm = 2.0 / (edges_hz[2 : num_bands + 2] - edges_hz[:num_bands])
    return weights * area_norm[:, None].astype(np.float32)


def mel_band_membership(sample_rate: int, n_fft: int, num_bands: int) -> torch.Tensor:
    """(num_bands, n_fft // 2 + 1) bool: the bins of each Mel band, the support of `slaney_mel_filterbank`, plus the
    two corner entries set as the classic code does, so that the lowest and highest bins are covered."""
    membership = torch.from_numpy(slaney_mel_filterbank(sample_rate, n_fft, num_bands) > 0)
    membership[0, 0] = True
    membership[-1, -1] = True
    if not membership.any(dim=0).all():
        raise ValueError(f"{num_bands} mel bands leave some of the {n_fft // 2 + 1} STFT bins uncovered")
    return membership
