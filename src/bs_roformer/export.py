"""ONNX export of the Roformers, STFT and iSTFT inside the graph, and an onnxruntime model for the Separator.

The exported graph maps `audio` (batch, channels, chunk) float32 to `stems` (batch, stems, channels, chunk) float32,
batch dynamic, chunk fixed at export. It is the model's whole-tensor forward (the path training and CUDA use:
`torch.export` traces it, not the CPU inference blocks) between a real-valued STFT and iSTFT built from ops every
ONNX runtime has, with no complex tensors:

- STFT (center=True, as `torch.stft`): reflect padding by n_fft // 2, then one strided Conv whose 2 * bins output
  channels are the windowed DFT basis (cosines for the real parts, minus sines for the imaginary parts).
- Masks multiply the spectrum as (real, imag) pairs.
- iSTFT (as `torch.istft`): one strided ConvTranspose whose weights are the windowed inverse real DFT basis (the
  overlap-add), then division by the overlap-added squared window, cut to the chunk's samples. `zero_dc` is the DC
  rows of that basis left at zero.

The graph always returns the chunk's length, as separation runs Mel models (`match_input_audio_length`). What a user
must do around the graph (chunking, fades, overlap-add, resampling) is the algorithm at the top of `separate.py`;
`OnnxModel` runs the graph under that code here.
"""

import copy
import hashlib
import json
import logging
import math
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__

DEFAULT_OPSET = 18  # torch's ONNX op library is written for opset 18; others go through the version converter

# --onnx-provider names -> onnxruntime execution providers
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}


def dft_bases(n_fft: int, window: torch.Tensor, normalized: bool, zero_dc: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(forward, inverse) bases, each (2 * bins, 1, n_fft) float32: rows are the real then the imaginary part of
    each bin; columns the samples of a frame. `window` (win_length) is zero-padded to n_fft in the middle, as
    `torch.stft` does. Computed in float64, angles from exact integer products k * n mod n_fft."""
    bins = n_fft // 2 + 1
    left = (n_fft - window.numel()) // 2
    frame_window = torch.zeros(n_fft, dtype=torch.float64)
    frame_window[left : left + window.numel()] = window.double()
    k, n = torch.arange(bins)[:, None], torch.arange(n_fft)[None, :]
    angles = 2 * math.pi * ((k * n) % n_fft).double() / n_fft
    cos, sin = torch.cos(angles), torch.sin(angles)
    # X_k = sum_n w[n] x[n] e^{-2 pi i k n / N}; normalized divides by sqrt(N) (torch.stft's `normalized`)
    scale = n_fft**-0.5 if normalized else 1.0
    forward = torch.cat([cos, -sin]) * frame_window * scale
    # irfft: x[n] = (1/N) sum_k c_k (Re X_k cos - Im X_k sin), c_k = 2 but for DC and Nyquist (1), whose imaginary
    # parts it ignores; then the synthesis window. normalized multiplies by sqrt(N) (torch.istft's `normalized`).
    weights = torch.full((bins, 1), 2.0, dtype=torch.float64)
    weights[0] = 1.0
    if n_fft % 2 == 0:
        weights[-1] = 1.0
    real_rows, imag_rows = weights * cos, -weights * sin
    imag_rows[0] = 0.0
    if n_fft % 2 == 0:
        imag_rows[-1] = 0.0
    if zero_dc:  # the model zeroes every stem's DC bin before the iSTFT
        real_rows[0] = 0.0
    inverse = torch.cat([real_rows, imag_rows]) * frame_window / n_fft * (n_fft**0.5 if normalized else 1.0)
    return forward.float()[:, None], inverse.float()[:, None]


def window_envelope(n_fft: int, hop: int, window: torch.Tensor, frames: int, samples: int) -> torch.Tensor:
    """The overlap-added squared window over the samples the iSTFT keeps (torch.istft's normalisation), float32."""
    left = (n_fft - window.numel()) // 2
    squared = torch.zeros(n_fft, dtype=torch.float64)
    squared[left : left + window.numel()] = window.double() ** 2
    envelope = torch.zeros(n_fft + hop * (frames - 1), dtype=torch.float64)
    for frame in range(frames):
        envelope[frame * hop : frame * hop + n_fft] += squared
    kept = envelope[n_fft // 2 : n_fft // 2 + samples]
    if kept.min() < 1e-11:
        raise ValueError(f"the window (length {window.numel()}) does not overlap-add to nonzero values at hop {hop}")
    return kept.float()


class ExportedRoformer(nn.Module):
    """A Roformer as the ONNX graph computes it: audio (b, s, chunk) -> stems (b, n, s, chunk), real arithmetic.

    `core_dtype` float16 runs the model between the STFT and the iSTFT in half precision; the STFT, the mask
    multiply and the iSTFT stay in float32, as under autocast."""

    def __init__(self, model: nn.Module, chunk: int, core_dtype: torch.dtype = torch.float32):
        super().__init__()
        stft = model.stft
        if chunk <= stft.n_fft // 2:
            raise ValueError(f"chunk of {chunk} samples is too short: the STFT (n_fft={stft.n_fft}) needs more than "
                             f"{stft.n_fft // 2}")
        self.model = model.to(core_dtype)
        self.core_dtype = core_dtype
        self.n_fft, self.hop, self.chunk = stft.n_fft, stft.hop_length, chunk
        self.channels, self.num_stems, self.bins = model.audio_channels, model.num_stems, stft.num_bins
        window = stft.window.float().cpu()
        forward_basis, inverse_basis = dft_bases(self.n_fft, window, stft.normalized, model.zero_dc)
        self.frames = 1 + chunk // self.hop
        self.register_buffer("forward_basis", forward_basis)
        self.register_buffer("inverse_basis", inverse_basis)
        self.register_buffer("envelope", window_envelope(self.n_fft, self.hop, window, self.frames, chunk))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        b, s, n = audio.shape[0], self.channels, self.num_stems
        frames, bins = self.frames, self.bins
        padded = F.pad(audio.reshape(b * s, 1, self.chunk), (self.n_fft // 2, self.n_fft // 2), mode="reflect")
        spec = F.conv1d(padded, self.forward_basis, stride=self.hop)  # (b * s, 2 * bins, frames)
        # features in (bin, channel, real/imag) order per frame, as Roformer.forward builds them
        spec = spec.view(b, s, 2, bins, frames).permute(0, 4, 3, 1, 2)  # (b, T, f, s, 2)
        masks = self.model.estimate_masks(spec.reshape(b, frames, -1).to(self.core_dtype))
        masks = masks.float().view(b, n, frames, bins, s, 2)
        spec = spec.unsqueeze(1)
        real = spec[..., 0] * masks[..., 0] - spec[..., 1] * masks[..., 1]
        imag = spec[..., 0] * masks[..., 1] + spec[..., 1] * masks[..., 0]
        stems = torch.stack([real, imag], dim=2)  # (b, n, 2, T, f, s)
        stems = stems.permute(0, 1, 5, 2, 4, 3).reshape(b * n * s, 2 * bins, frames)
        audio_out = F.conv_transpose1d(stems, self.inverse_basis, stride=self.hop)
        audio_out = audio_out[:, 0, self.n_fft // 2 : self.n_fft // 2 + self.chunk] / self.envelope
        return audio_out.view(b, n, s, self.chunk)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def quiet_exporter():
    """The exporter's info-level chatter (optional torchvision ops, constant folding it skips) kept to errors."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_onnx(model: nn.Module, config: dict, output: str | Path, *, source_id: str, checkpoint_sha256: str,
                chunk_size: int | None = None, opset: int | None = None, fp16: bool = False,
                overwrite: bool = False) -> dict:
    """Export `model` (built from `config`) to `output`; returns the metadata written into the file.

    The chunk size and overlap default to the config's, as the Separator reads them. The file is written to a
    `.part` file and renamed, and an existing `output` is kept unless `overwrite`."""
    import onnx  # noqa: F401  (the [onnx] extra; torch.onnx.export needs it and onnxscript)

    from .separate import Separator

    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists (use --overwrite to replace it)")
    opset = opset or DEFAULT_OPSET
    if opset < DEFAULT_OPSET:
        raise ValueError(f"opset {opset} is too old: the export needs opset {DEFAULT_OPSET} or newer")
    model = copy.deepcopy(model)  # the Separator and a fp16 export change it
    settings = Separator(model, config, device="cpu", chunk_size=chunk_size)  # the config's separation settings
    if len(settings.stems) != model.num_stems:
        raise ValueError(f"the config names {len(settings.stems)} stem(s) ({settings.stems}) but the model has "
                         f"{model.num_stems}: set model.num_stems and training.instruments to agree")
    wrapper = ExportedRoformer(model, settings.chunk_size, torch.float16 if fp16 else torch.float32).eval()
    metadata = {
        "sample_rate": str(settings.sample_rate),
        "chunk_size": str(settings.chunk_size),
        "num_overlap": str(settings.num_overlap),
        "stems": json.dumps(settings.stems),
        "audio_channels": str(wrapper.channels),
        "model_type": type(model).__name__,
        "source_model": source_id,
        "checkpoint_sha256": checkpoint_sha256,
        "precision": "fp16" if fp16 else "fp32",
        "layout": "audio (batch, channels, chunk_size) float32 -> stems (batch, stems, channels, chunk_size) float32",
        "producer": f"bs-roformer {__version__}",
    }
    example = torch.randn(2, wrapper.channels, settings.chunk_size)  # batch 2: torch.export specialises 1
    with quiet_exporter():
        program = torch.onnx.export(
            wrapper, (example,), dynamo=True, input_names=["audio"], output_names=["stems"], opset_version=opset,
            dynamic_shapes={"audio": {0: torch.export.Dim("batch")}}, external_data=False, verbose=False,
        )
    program.model.metadata_props.update(metadata)
    part = output.with_name(output.name + ".part")
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        program.save(str(part), external_data=False)
        os.replace(part, output)
    finally:
        part.unlink(missing_ok=True)
    return metadata


def export_files(config_path, checkpoint_path, output, *, source_id: str | None = None, model_type: str | None = None,
                 **options) -> dict:
    """Export the model of a config and checkpoint (see `export_onnx`); the source id defaults to the checkpoint's
    file name."""
    from .config import load_model

    model, config = load_model(config_path, checkpoint_path, model_type)
    return export_onnx(model, config, output, source_id=source_id or Path(checkpoint_path).name,
                       checkpoint_sha256=file_sha256(checkpoint_path), **options)


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ValueError("the onnxruntime backend needs onnxruntime: pip install 'bs-roformer-fast[onnx]'") from None
    return onnxruntime


class OnnxModel:
    """An exported model run by onnxruntime, callable like the torch model: (b, channels, chunk) -> (b, stems,
    channels, chunk), or (b, channels, chunk) for one stem. `config` is rebuilt from the file's metadata, so
    `Separator(OnnxModel(path), OnnxModel(path).config, device="cpu")` separates with the same chunking."""

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int | None = None):
        ort = _import_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        name = PROVIDERS.get(provider.lower(), provider)
        available = ort.get_available_providers()
        if name not in available:
            raise ValueError(f"execution provider {provider!r} ({name}) is not in this onnxruntime build, which has "
                             f"{', '.join(available)}: install the onnxruntime package built for it "
                             f"(onnxruntime-gpu, onnxruntime-directml) or use --onnx-provider cpu")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: fp16 graphs warn about every constant they cannot fold on the CPU
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=[name])
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        if "chunk_size" not in self.metadata:
            raise ValueError(f"{path} has no bs-roformer metadata (chunk_size, stems, ...): export it with "
                             f"`bs-roformer export`")
        self.chunk_size = int(self.metadata["chunk_size"])
        self.stems = json.loads(self.metadata["stems"])
        self.num_stems = len(self.stems)
        self.audio_channels = int(self.metadata["audio_channels"])
        self.stereo = self.audio_channels == 2
        self.config = {
            "audio": {"sample_rate": int(self.metadata["sample_rate"]), "chunk_size": self.chunk_size},
            "inference": {"chunk_size": self.chunk_size, "num_overlap": int(self.metadata["num_overlap"])},
            "training": {"instruments": self.stems},
            "model": {"num_stems": self.num_stems},
        }

    def to(self, device):
        """The session runs on its execution provider; chunks go through host memory whatever `device` is."""
        return self

    def eval(self):
        return self

    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        expected = (self.audio_channels, self.chunk_size)
        if audio.ndim != 3 or tuple(audio.shape[1:]) != expected:
            raise ValueError(f"this ONNX model takes (batch, {expected[0]}, {expected[1]}) chunks, got "
                             f"{tuple(audio.shape)}: export it again with --chunk-size for other chunks")
        stems = self.session.run(["stems"], {"audio": audio.detach().float().cpu().numpy()})[0]
        stems = torch.from_numpy(stems).to(audio.device)
        return stems[:, 0] if self.num_stems == 1 else stems


def onnx_separator(path, provider: str = "cpu", *, chunk_size: int | None = None, threads: int | None = None,
                   **options):
    """A Separator (CPU accumulators) over an exported model; `options` as for Separator (num_overlap, batch_size,
    tta)."""
    from .separate import Separator

    model = OnnxModel(path, provider, threads)
    if chunk_size is not None and chunk_size != model.chunk_size:
        raise ValueError(f"{path} was exported for chunks of {model.chunk_size} samples, not {chunk_size}: "
                         f"export again with --chunk-size {chunk_size}")
    return Separator(model, model.config, device="cpu", precision="fp32", name=Path(path).stem, **options)
