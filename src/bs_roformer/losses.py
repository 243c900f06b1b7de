"""MSST's standard losses, for `train --use-standard-loss`: the Roformer's output against the target stems with
one of MSST's `--loss` terms (or a weighted sum of several) instead of the model's own loss.

Every function takes `estimate` and `target` shaped (batch, stems, channels, samples) and returns a scalar.

- `masked_loss`: the squared error, averaged over channels and samples per stem and item when `coarse`
  (`training.coarse_loss_clip`), with every value at or above its `q`-quantile (`training.q`) masked out, the
  quantile taken per stem over the batch (or, not coarse, over all of that stem's values); the mean of what is left,
  the masked values counting as zeros.
- `mse_loss`, `l1_loss`: the mean squared and absolute error.
- `multistft_loss`: auraloss's `MultiResolutionSTFTLoss` with the config's top-level `loss_multistft:` arguments, on
  (batch, stems x channels, samples) (the `losses` extra).
- `spec_rmse_loss`: the square root of the mean squared error of the complex STFTs, per item and stem, then averaged.
- `spec_masked_loss`: the squared error of the complex STFTs, averaged over frequency and time per item, stem,
  channel and real/imaginary part when `coarse`, masked at its `q`-quantile per item as `masked_loss` does.

Coefficients are MSST's `--<loss>_coef` flags (`training.<loss>_coef` here); MSST's defaults are 1, and 0.001 for
`multistft_loss`. The names are `train_settings.LOSSES`; MSST's other terms are refused there.
"""

import torch
import torch.nn.functional as F


def masked_loss(estimate: torch.Tensor, target: torch.Tensor, q: float, coarse: bool = True) -> torch.Tensor:
    error = F.mse_loss(estimate, target, reduction="none").transpose(0, 1)  # (stems, batch, channels, samples)
    if coarse:
        error = error.mean(dim=(-1, -2))
    return _mean_below_quantile(error.reshape(error.shape[0], -1), q)


def _mean_below_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The mean of `values` (rows, n) with each row's values at or above its q-quantile set to zero."""
    threshold = torch.quantile(values.detach(), q, dim=1, keepdim=True, interpolation="linear")
    return (values * (values < threshold)).mean()


def _complex_spectra(signals: torch.Tensor, stft: dict) -> torch.Tensor:
    """(..., samples) -> (..., frequencies, frames, 2): real and imaginary parts."""
    flat = signals.reshape(-1, signals.shape[-1])
    window = torch.ones(stft["win_length"], device=signals.device)  # compat: MSST passes no window (rectangular)
    spectra = torch.stft(flat, stft["n_fft"], stft["hop_length"], stft["win_length"], window=window, center=True,
                         normalized=stft["normalized"], return_complex=True)
    spectra = torch.view_as_real(spectra)
    return spectra.reshape(*signals.shape[:-1], *spectra.shape[1:])


def spec_rmse_loss(estimate: torch.Tensor, target: torch.Tensor, stft: dict, eps: float = 1e-8) -> torch.Tensor:
    error = F.mse_loss(_complex_spectra(estimate, stft), _complex_spectra(target, stft), reduction="none")
    return (error.mean(dim=tuple(range(2, error.dim()))) + eps).sqrt().mean()


def spec_masked_loss(estimate: torch.Tensor, target: torch.Tensor, stft: dict, q: float,
                     coarse: bool = True) -> torch.Tensor:
    error = F.mse_loss(_complex_spectra(estimate, stft), _complex_spectra(target, stft), reduction="none")
    if coarse:
        error = error.mean(dim=(-3, -2))
    # compat: unlike masked_loss, MSST takes this quantile per item, across stems
    return _mean_below_quantile(error.reshape(error.shape[0], -1), q)


def spectrogram_settings(model_section: dict) -> dict:
    """The STFT of the spectral losses. compat: MSST reads `nfft`, `hop_size`, `win_size` and `normalized` from the
    model section, names a Roformer config does not use, so for a Roformer they are 4096, 1024, 4096 and true."""
    return {"n_fft": int(model_section.get("nfft", 4096)), "hop_length": int(model_section.get("hop_size", 1024)),
            "win_length": int(model_section.get("win_size", 4096)),
            "normalized": bool(model_section.get("normalized", True))}


class StandardLoss(torch.nn.Module):
    """The weighted sum of the `terms` ({name: coefficient}) MSST's `--loss` names, computed in float32."""

    def __init__(self, terms: dict[str, float], q: float, coarse: bool, stft: dict, multistft: dict):
        super().__init__()
        self.terms, self.q, self.coarse, self.stft = dict(terms), q, coarse, stft
        if "multistft_loss" in terms:
            import auraloss

            self.multistft = auraloss.freq.MultiResolutionSTFTLoss(**multistft)

    def term(self, name: str, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if name == "masked_loss":
            return masked_loss(estimate, target, self.q, self.coarse)
        if name == "mse_loss":
            return F.mse_loss(estimate, target)
        if name == "l1_loss":
            return F.l1_loss(estimate, target)
        if name == "multistft_loss":
            return self.multistft(estimate.flatten(1, 2), target.flatten(1, 2))
        if name == "spec_rmse_loss":
            return spec_rmse_loss(estimate, target, self.stft)
        if name == "spec_masked_loss":
            return spec_masked_loss(estimate, target, self.stft, self.q, self.coarse)
        raise ValueError(f"unknown loss {name!r}")

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        estimate, target = estimate.float(), target.float()
        return sum(coefficient * self.term(name, estimate, target) for name, coefficient in self.terms.items())
