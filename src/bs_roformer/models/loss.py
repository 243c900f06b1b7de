"""The Roformers' training loss: waveform L1 plus a multi-resolution STFT L1 on complex spectra."""

import torch
import torch.nn.functional as F


class _MeanSpectralModulus(torch.autograd.Function):
    """`torch.fft.rfft(x, n).abs().mean()` whose backward is one scaled copy of the spectrum and one inverse real FFT.
    Through torch's own operators the backward takes the modulus's sign (a complex pass), scales it by the mean's
    gradient, zero-fills a full complex spectrum and runs a complex-to-complex transform: a large part of a small
    model's training step.

    The gradient of mean |X| with respect to X is X / |X| / count (0 where X is 0, as for torch's abs). The gradient
    of a one-sided spectrum is the Hermitian sum over the bins it stands for: `irfft` with the bins that have a
    mirror image (all but DC and, for even n, Nyquist) halved, scaled as the forward was (irfft's norm "forward"
    undoes rfft's "backward"; "ortho" is its own inverse), and the imaginary parts of the DC and Nyquist bins, which a
    real signal's spectrum cannot have, zeroed (cuFFT's irfft leaves them undefined)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, n: int, norm: str) -> torch.Tensor:
        if n < x.shape[-1]:
            raise ValueError(f"n ({n}) must not be shorter than the signal ({x.shape[-1]})")
        spectrum = torch.fft.rfft(x, n=n, norm=norm)
        modulus = torch.hypot(*torch.view_as_real(spectrum).unbind(-1))  # faster than abs() of complex, same values
        ctx.save_for_backward(spectrum, modulus)
        ctx.n, ctx.length = n, x.shape[-1]
        ctx.inverse_norm = {"backward": "forward", "ortho": "ortho"}[norm]
        return modulus.mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        spectrum, modulus = ctx.saved_tensors
        scale = torch.where(modulus > 0, (grad / modulus.numel()) / modulus, 0.0)
        scale[..., 1 : (ctx.n + 1) // 2] *= 0.5
        grad_spectrum = spectrum * scale
        grad_spectrum[..., 0].imag.zero_()
        if ctx.n % 2 == 0:
            grad_spectrum[..., -1].imag.zero_()
        inverse = torch.fft.irfft(grad_spectrum, n=ctx.n, norm=ctx.inverse_norm)
        return inverse[..., : ctx.length], None, None


class MultiResolutionSTFTLoss(torch.nn.Module):
    """Sum over window sizes w of mean |STFT_w(estimate) - STFT_w(target)| (complex modulus).

    Each resolution is `torch.stft` with n_fft = max(w, stft_n_fft), win_length = w, the same hop for all, centred
    frames with reflect padding, and `window_fn(w)`. Computed in float32 even under autocast, and faster than the
    classic way (the same value to float32 rounding; tested):
    - the STFT is linear, so one transform of `estimate - target` replaces two;
    - only the w window samples of each frame are cut out and weighted; `rfft(n=n_fft)` zero-pads them at the end
      where `torch.stft` pads the window on both sides, which only turns each bin's phase and leaves its modulus
      unchanged;
    - frames come from `unfold`, whose backward is an overlap-add; torch.stft's strided frames backpropagate
      through a slow `index_add_`;
    - the backward of the mean modulus and the FFT is one scaled copy of the spectrum and an inverse real FFT
      (`_MeanSpectralModulus`).
    """

    def __init__(self, window_sizes, hop_length, stft_n_fft, normalized=False, window_fn=torch.hann_window,
                 quarter_window_hop=False):
        super().__init__()
        self.window_sizes = tuple(window_sizes)
        self.hop_length, self.stft_n_fft, self.normalized = hop_length, stft_n_fft, normalized
        # with `quarter_window_hop` each resolution hops max(hop_length, w // 4) (MSST's Mel conformer)
        self.hops = {size: max(hop_length, size // 4) if quarter_window_hop else hop_length for size in window_sizes}
        for size in self.window_sizes:
            self.register_buffer(f"window_{size}", window_fn(size).float(), persistent=False)
        self.longest_transform = max((max(size, stft_n_fft) for size in self.window_sizes), default=0)

    def _mean_modulus(self, audio: torch.Tensor, size: int) -> torch.Tensor:
        """Mean modulus of the STFT of (signals, samples) with window size `size`."""
        n_fft = max(size, self.stft_n_fft)
        padded = F.pad(audio[:, None], (n_fft // 2, n_fft // 2), mode="reflect")[:, 0]
        left = (n_fft - size) // 2  # where the window starts in each n_fft frame
        windowed = padded[:, left : padded.shape[-1] - (n_fft - size - left)].unfold(-1, size, self.hops[size])
        windowed = windowed * getattr(self, f"window_{size}")
        norm = "ortho" if self.normalized else "backward"
        if torch.compiler.is_compiling():
            # torch.compile (2.13) got the gradients of a custom FFT Function wrong beside a graph break (remove
            # when a torch release passes tests/test_train.py's compiled test without it); compiled code
            # differentiates the plain operators itself
            return torch.fft.rfft(windowed, n=n_fft, norm=norm).abs().mean()
        return _MeanSpectralModulus.apply(windowed, n_fft, norm)

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        longest = self.longest_transform
        if estimate.shape[-1] <= longest // 2:
            raise ValueError(
                f"input of {estimate.shape[-1]} samples is too short for the multi-resolution STFT loss: its largest "
                f"transform ({longest} points, reflect-padded by {longest // 2}) needs more than {longest // 2}: "
                "train on longer chunks, or leave the larger sizes out of multi_stft_resolutions_window_sizes")
        with torch.autocast(estimate.device.type, enabled=False):
            difference = (estimate.float() - target.float()).reshape(-1, estimate.shape[-1])
            total = difference.new_zeros(())
            for size in self.window_sizes:
                total = total + self._mean_modulus(difference, size)
        return total


def roformer_loss(estimate, target, multi_resolution: MultiResolutionSTFTLoss, weight: float):
    """(total, (waveform L1, unweighted multi-resolution term)), the classic `return_loss_breakdown` form."""
    waveform = F.l1_loss(estimate.float(), target.float())
    spectral = multi_resolution(estimate, target)
    return waveform + weight * spectral, (waveform, spectral)
