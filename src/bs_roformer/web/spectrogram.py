"""Spectrogram pictures of audio files, for the page: a torch STFT read in blocks (bounded memory for any length),
the channels averaged, time columns max-pooled to at most MAX_COLUMNS, frequencies on log-spaced rows, drawn in dB
by matplotlib."""

import itertools
import math
import os
from pathlib import Path

import torch

from ..audio import AudioReader

N_FFT, HOP = 2048, 512  # 46 ms windows every 12 ms at 44.1 kHz
MAX_COLUMNS = 1200  # about the picture's width in pixels: finer time detail would not show
ROWS, LOWEST_HZ = 240, 30.0  # log-spaced frequency rows: music's detail is in its low octaves
DB_RANGE = 80.0
TICKS_HZ = (50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)


def pooled_power(path: Path) -> tuple[torch.Tensor, float, int]:
    """(N_FFT // 2 + 1, columns) STFT power of the channel mean, each column the maximum over `pool` consecutive
    frames; also the duration in seconds and the sample rate."""
    window = torch.hann_window(N_FFT)
    with AudioReader(path) as reader:
        info = reader.info
        pool = max(math.ceil(((info.frames - N_FFT) // HOP + 1) / MAX_COLUMNS), 1)
        carry = torch.zeros(0)  # samples not yet covered by a whole frame
        pending = torch.zeros(N_FFT // 2 + 1, 0)  # frames not yet pooled
        columns = []
        for block in reader.blocks():
            signal = torch.cat([carry, torch.from_numpy(block).mean(dim=0)])
            frames = (signal.shape[0] - N_FFT) // HOP + 1
            if frames <= 0:
                carry = signal
                continue
            used = signal[: (frames - 1) * HOP + N_FFT]
            power = torch.stft(used, N_FFT, HOP, window=window, center=False, return_complex=True).abs().square()
            carry = signal[frames * HOP:]
            pending = torch.cat([pending, power], dim=1)
            whole = pending.shape[1] // pool * pool
            columns.append(pending[:, :whole].reshape(pending.shape[0], -1, pool).amax(dim=-1))
            pending = pending[:, whole:]
        if pending.shape[1]:
            columns.append(pending.amax(dim=1, keepdim=True))
        if not columns:  # shorter than one window: one zero-padded frame
            padded = torch.nn.functional.pad(carry, (0, N_FFT - carry.shape[0]))
            columns.append(torch.fft.rfft(padded * window).abs().square()[:, None])
    return torch.cat(columns, dim=1), info.frames / info.sample_rate, info.sample_rate


def log_frequency_rows(power: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """(bins, columns) -> (ROWS, columns): row r spans LOWEST_HZ * ratio**r to LOWEST_HZ * ratio**(r + 1) up to
    Nyquist, and holds the largest power of the STFT bins in it (the nearest bin where a row is narrower)."""
    bins, bin_hz = power.shape[0], sample_rate / N_FFT
    edges = torch.logspace(math.log10(LOWEST_HZ), math.log10(sample_rate / 2), ROWS + 1, dtype=torch.float64)
    rows = []
    for low, high in itertools.pairwise(edges):
        first = min(int(torch.ceil(low / bin_hz)), bins - 1)
        last = max(int(torch.floor(high / bin_hz)), first)
        rows.append(power[first : last + 1].amax(dim=0))
    return torch.stack(rows)


def write_spectrogram(path: Path, png: Path, title: str, reference_power: float | None = None) -> float:
    """Draw `path`'s spectrogram into `png` (written atomically) in dB below `reference_power` (default: its own
    peak; the page passes the mixture's, so the stems' colours compare with it). Returns the peak power."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, safe in the worker thread

    power, seconds, sample_rate = pooled_power(path)
    peak = float(power.max())
    reference = reference_power or peak or 1.0
    decibels = 10 * torch.log10(log_frequency_rows(power, sample_rate) / reference + 1e-20)
    figure = Figure(figsize=(6.4, 1.7), dpi=100)
    axes = figure.add_subplot()
    top = math.log10(sample_rate / 2)
    image = axes.imshow(decibels.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=-DB_RANGE, vmax=0,
                        extent=(0, seconds, math.log10(LOWEST_HZ), top), interpolation="nearest")
    ticks = [hz for hz in TICKS_HZ if hz < sample_rate / 2]
    axes.set_yticks([math.log10(hz) for hz in ticks], [f"{hz // 1000}k" if hz >= 1000 else str(hz) for hz in ticks])
    axes.set_title(title, fontsize=9)
    axes.set_xlabel("seconds", fontsize=8)
    axes.set_ylabel("Hz", fontsize=8)
    axes.tick_params(labelsize=7)
    colorbar = figure.colorbar(image, ax=axes, pad=0.01)
    colorbar.ax.tick_params(labelsize=7)
    colorbar.set_label("dB", fontsize=8)
    figure.tight_layout(pad=0.3)
    partial = png.with_name(png.name + ".part")
    figure.savefig(partial, format="png")
    os.replace(partial, png)
    return peak
