"""The Roformers' training loss: waveform L1 plus a multi-resolution STFT L1 on complex spectra."""

import torch
import torch.nn.functional as F


class MultiResolutionSTFTLoss(torch.nn.Module):
    """Sum over window sizes w of mean |STFT_w(estimate) - STFT_w(target)| (complex modulus).

    Each resolution uses n_fft = max(w, stft_n_fft), win_length = w, the same hop for all, and `window_fn(w)`.
    Computed in float32 even under autocast.
    """

    def __init__(self, window_sizes, hop_length, stft_n_fft, normalized=False, window_fn=torch.hann_window):
        super().__init__()
        self.window_sizes = tuple(window_sizes)
        self.hop_length, self.stft_n_fft, self.normalized = hop_length, stft_n_fft, normalized
        for size in self.window_sizes:
            self.register_buffer(f"window_{size}", window_fn(size).float(), persistent=False)

    def _stft(self, audio: torch.Tensor, size: int) -> torch.Tensor:
        return torch.stft(audio.reshape(-1, audio.shape[-1]).float(), n_fft=max(size, self.stft_n_fft),
                          hop_length=self.hop_length, win_length=size, window=getattr(self, f"window_{size}"),
                          normalized=self.normalized, return_complex=True)

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = estimate.new_zeros((), dtype=torch.float32)
        with torch.autocast(estimate.device.type, enabled=False):
            for size in self.window_sizes:
                with torch.no_grad():  # the target needs no gradient: this halves the FFTs of the backward pass
                    target_spec = self._stft(target, size)
                total = total + (self._stft(estimate, size) - target_spec).abs().mean()
        return total


def roformer_loss(estimate, target, multi_resolution: MultiResolutionSTFTLoss, weight: float):
    """(total, (waveform L1, unweighted multi-resolution term)), the classic `return_loss_breakdown` form."""
    waveform = F.l1_loss(estimate.float(), target.float())
    spectral = multi_resolution(estimate, target)
    return waveform + weight * spectral, (waveform, spectral)
