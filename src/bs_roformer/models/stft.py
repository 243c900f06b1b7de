"""STFT front end and back end, always in float32 (also under autocast): masks multiply the mixture's spectrum."""

import torch


class STFT(torch.nn.Module):
    """`torch.stft` with center=True, reflect padding and a one-sided spectrum, as every Roformer checkpoint uses."""

    def __init__(self, n_fft: int, hop_length: int, win_length: int, normalized: bool, window_fn=None):
        super().__init__()
        self.n_fft, self.hop_length, self.win_length, self.normalized = n_fft, hop_length, win_length, normalized
        window = (window_fn or torch.hann_window)(win_length)
        self.register_buffer("window", window.float(), persistent=False)
        self.num_bins = n_fft // 2 + 1

    def _kwargs(self):
        window = self.window.float()
        return dict(n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                    normalized=self.normalized, window=window)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(..., samples) real -> (..., bins, frames) complex64."""
        shape = audio.shape
        with torch.autocast(audio.device.type, enabled=False):
            spec = torch.stft(audio.reshape(-1, shape[-1]).float(), center=True, pad_mode="reflect",
                              onesided=True, return_complex=True, **self._kwargs())
        return spec.view(*shape[:-1], *spec.shape[-2:])

    def inverse(self, spec: torch.Tensor, length: int | None) -> torch.Tensor:
        """(..., bins, frames) complex -> (..., samples) float32; `length` None gives hop * (frames - 1) samples."""
        shape = spec.shape
        with torch.autocast(spec.device.type, enabled=False):
            audio = torch.istft(spec.reshape(-1, *shape[-2:]), center=True, onesided=True, length=length,
                                **self._kwargs())
        return audio.view(*shape[:-2], audio.shape[-1])
