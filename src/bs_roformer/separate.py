"""Separating whole songs: MSST's chunked overlap-add, batched, streaming, with accumulators on the model's device.

The algorithm (the one published SDR figures were measured with): chunks of `chunk` samples every
`step = chunk // num_overlap`; each chunk's estimate is weighted by a window of ones with linear fades over
`chunk // 10` samples at both ends (no fade-in on the first chunk, no fade-out on the last), and the output is the
weighted average (0 where no weight falls). A track longer than `2 * (chunk - step)` is first reflect-padded by
`chunk - step` on both sides; a short last chunk is padded to `chunk` (reflect when it is longer than half a chunk,
zeros otherwise). Unlike MSST, where the fades at the ends are dropped per batch, the windows depend only on the
chunk's position, so the result does not depend on the batch size.

Input and output stream in blocks: memory is bounded by the chunk and batch sizes, not by the song's length.
"""

import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F


def fade_window(chunk: int, fade: int, fade_in: bool, fade_out: bool) -> torch.Tensor:
    window = torch.ones(chunk)
    if fade > 0:
        if fade_in:
            window[:fade] = torch.linspace(0, 1, fade)
        if fade_out:
            window[-fade:] = torch.linspace(1, 0, fade)
    return window


class _PaddedStream:
    """The mix, reflect-padded by `border` at both ends, read from a stream of (channels, n) blocks.

    Keeps only what later chunks can still need: samples from the oldest chunk start still to come, plus the last
    `border + 1` samples (the end padding reflects them)."""

    def __init__(self, blocks: Iterator[torch.Tensor], border: int):
        self.blocks, self.border = blocks, border
        self.data = None  # padded samples [start, start + data.shape[-1])
        self.start = 0
        self.mix_read = 0
        self.start_padded = False
        self.ended = False

    @property
    def end(self) -> int:
        return self.start + (0 if self.data is None else self.data.shape[-1])

    def _append(self, block: torch.Tensor):
        self.data = block if self.data is None else torch.cat([self.data, block], dim=-1)

    def _read_block(self):
        block = next(self.blocks, None)
        if block is None:
            self.ended = True
            if self.border:  # the end padding reflects the last samples: mix[L-2], mix[L-3], ...
                self._append(self.data[..., -self.border - 1 : -1].flip(-1))
            return
        self.mix_read += block.shape[-1]
        self._append(block)
        if self.border and not self.start_padded and self.mix_read > self.border:
            # the start padding reflects the first samples: mix[border], ..., mix[1]
            self.data = torch.cat([self.data[..., 1 : self.border + 1].flip(-1), self.data], dim=-1)
            self.start_padded = True

    def fill_to(self, position: int):
        """Read until the padded signal is available up to `position` or the stream ends."""
        while not self.ended and (self.end < position or self.mix_read <= self.border):
            self._read_block()

    def get(self, start: int, stop: int) -> torch.Tensor:
        return self.data[..., start - self.start : min(stop, self.end) - self.start]

    def drop_before(self, position: int):
        keep_from = min(position, self.end - self.border - 1) if not self.ended else position
        if keep_from > self.start:
            self.data = self.data[..., keep_from - self.start :]
            self.start = keep_from


def overlap_add(
    blocks: Iterator[torch.Tensor],
    length: int,
    separate: Callable[[torch.Tensor], torch.Tensor],
    *,
    chunk: int,
    num_overlap: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> Iterator[torch.Tensor]:
    """Separate a mix given as (channels, n) blocks totalling `length` samples; yields (stems, channels, n) output
    blocks on the CPU, in order, totalling `length` samples.

    `separate` maps a (batch, channels, chunk) tensor on `device` to (batch, stems, channels, chunk)."""
    if chunk < 1 or num_overlap < 1 or batch_size < 1:
        raise ValueError(f"chunk ({chunk}), num_overlap ({num_overlap}) and batch_size ({batch_size}) must be >= 1")
    step = max(chunk // num_overlap, 1)
    fade = chunk // 10
    border = chunk - step if length > 2 * (chunk - step) else 0
    padded_length = length + 2 * border
    starts = range(0, padded_length, step)
    windows = {(first, last): fade_window(chunk, fade, not first, not last).to(device)
               for first in (False, True) for last in (False, True)}

    source = _PaddedStream(blocks, border)
    accumulated = weights = None  # padded samples [emitted, emitted + accumulated.shape[-1])
    emitted = 0  # padded position up to which output has been yielded
    for first_index in range(0, len(starts), batch_size):
        batch_starts = starts[first_index : first_index + batch_size]
        source.fill_to(batch_starts[-1] + chunk)
        pieces = []
        for start in batch_starts:
            piece = source.get(start, start + chunk)
            real = piece.shape[-1]
            if real < chunk:
                mode = "reflect" if real > chunk // 2 else "constant"
                piece = F.pad(piece[None], (0, chunk - real), mode=mode)[0]
            pieces.append(piece)
        estimates = separate(torch.stack(pieces).to(device))

        span = batch_starts[-1] + chunk - emitted
        if accumulated is None:
            accumulated = estimates.new_zeros(*estimates.shape[1:3], span, dtype=torch.float32)
            weights = estimates.new_zeros(span, dtype=torch.float32)
        elif accumulated.shape[-1] < span:
            grow = span - accumulated.shape[-1]
            accumulated = F.pad(accumulated, (0, grow))
            weights = F.pad(weights, (0, grow))
        for start, estimate in zip(batch_starts, estimates):
            real = min(chunk, padded_length - start)
            window = windows[start == 0, start + step >= padded_length][:real]
            offset = start - emitted
            accumulated[..., offset : offset + real] += estimate[..., :real].float() * window
            weights[offset : offset + real] += window

        final = batch_starts[-1] + step if batch_starts[-1] + step < padded_length else padded_length
        done = final - emitted
        averaged = torch.where(weights[:done] > 0, accumulated[..., :done] / weights[:done], 0.0)
        lo, hi = max(border - emitted, 0), min(border + length - emitted, done)
        if hi > lo:
            yield averaged[..., lo:hi].cpu()
            if progress is not None:
                progress(hi - lo)
        accumulated, weights = accumulated[..., done:], weights[done:]
        emitted = final
        source.drop_before(final)


def tta_separate(model_call: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Test-time augmentation: the mean of the plain pass, a pass with the channels swapped and a pass with the
    polarity inverted (each undone on the output)."""

    def separate(batch: torch.Tensor) -> torch.Tensor:
        plain = model_call(batch)
        swapped = model_call(batch.flip(1)).flip(-2)
        inverted = -model_call(-batch)
        return (plain + swapped + inverted) / 3

    return separate


# ---- the Separator: a model plus the settings of its config, over files or tensors ---------------------------------

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but CUDA is not available here; use --device cpu")
    return device


class Separator:
    """Separates songs with a Roformer model. Build it with `Separator.from_files(config, checkpoint)` (or from a
    model and its config dict), then call `separate(audio, sample_rate)` on tensors or `separate_file(...)`.

    Settings default to the config's `inference` section (`chunk_size`, `num_overlap`, `batch_size`), then its
    `audio` section; stem names come from `training.target_instrument` / `training.instruments`."""

    def __init__(self, model: torch.nn.Module, config: dict, *, device="auto", precision="fp32",
                 chunk_size: int | None = None, num_overlap: int | None = None, batch_size: int | None = None,
                 tta: bool = False):
        from .config import stem_names

        audio, inference = config.get("audio") or {}, config.get("inference") or {}
        self.device = resolve_device(device)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if precision == "fp16" and self.device.type == "cpu":
            raise ValueError("fp16 needs a GPU; on the CPU use bf16 (or fp32)")
        self.precision = precision
        self.model = model.to(self.device).eval()
        if hasattr(self.model, "match_input_audio_length"):
            self.model.match_input_audio_length = True  # Mel: every chunk's estimate covers the whole chunk
        self.sample_rate = int(audio.get("sample_rate", 44100))
        self.chunk_size = int(chunk_size or inference.get("chunk_size") or audio.get("chunk_size") or 8 * self.sample_rate)
        self.num_overlap = int(num_overlap or inference.get("num_overlap") or 2)
        self.batch_size = int(batch_size or inference.get("batch_size") or 1)
        self.tta = tta
        self.stems = stem_names(config)
        self.model_channels = 2 if getattr(model, "stereo", True) else 1

    @classmethod
    def from_files(cls, config_path, checkpoint_path, model_type: str | None = None, **options) -> "Separator":
        from .config import load_model

        model, config = load_model(config_path, checkpoint_path, model_type)
        return cls(model, config, **options)

    @classmethod
    def demo(cls, **options) -> "Separator":
        """The small vocal model shipped in the package (trained on synthetic songs; see `bs_roformer.demo`)."""
        from . import demo

        return cls.from_files(demo.CONFIG, demo.WEIGHTS, **options)

    # -- the model call on one batch of chunks --

    def _model_call(self, batch: torch.Tensor) -> torch.Tensor:
        """(b, channels, chunk) in the file's channel count -> (b, stems, channels, chunk)."""
        channels = batch.shape[1]
        if channels == self.model_channels:
            model_input = batch
        elif self.model_channels == 2:  # mono file, stereo model: feed both channels the same signal
            model_input = batch.expand(-1, 2, -1)
        else:  # stereo file, mono model: each channel on its own
            model_input = batch.reshape(-1, 1, batch.shape[-1])
        dtype = PRECISIONS[self.precision]
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            out = self.model(model_input).float()
        if out.ndim == 3:  # one stem
            out = out.unsqueeze(1)
        if channels == self.model_channels:
            return out
        if self.model_channels == 2:
            return out.mean(dim=2, keepdim=True)
        return out.reshape(batch.shape[0], channels, out.shape[1], -1).transpose(1, 2)

    def _stream(self, blocks, length: int, progress=None):
        separate = tta_separate(self._model_call) if self.tta else self._model_call
        yield from overlap_add(blocks, length, separate, chunk=self.chunk_size, num_overlap=self.num_overlap,
                               batch_size=self.batch_size, device=self.device, progress=progress)

    def separate(self, audio: torch.Tensor, sample_rate: int | None = None) -> dict[str, torch.Tensor]:
        """audio (channels, samples) or (samples,) at `sample_rate` (default: the model's) -> {stem: tensor of the
        same shape and rate}."""
        from .audio import resampled

        squeeze = audio.ndim == 1
        audio = audio.reshape(1, -1) if squeeze else audio
        check_channels(audio.shape[0])
        if audio.shape[-1] == 0:
            raise ValueError("the audio is empty (0 samples)")
        sample_rate = sample_rate or self.sample_rate
        mix = clean_samples(audio.float().cpu())
        if sample_rate != self.sample_rate:
            mix = torch.from_numpy(next(resampled(iter([mix.numpy()]), sample_rate, self.sample_rate, len(mix))))
        out = torch.cat(list(self._stream(iter([mix]), mix.shape[-1])), dim=-1)
        if sample_rate != self.sample_rate:
            flat = out.reshape(-1, out.shape[-1]).numpy()
            flat = next(resampled(iter([flat]), self.sample_rate, sample_rate, len(flat)))
            out = fit_length(torch.from_numpy(flat), audio.shape[-1]).reshape(*out.shape[:2], -1)
        stems = {name: out[index] for index, name in enumerate(self.stems)}
        return {name: stem[0] if squeeze else stem for name, stem in stems.items()}


    def output_paths(self, track: Path, out_dir: Path, template: str, output_format: str,
                     stems: list[str] | None, instrumental: bool) -> dict[str, Path]:
        """{output name: path} for a track; names are model stems, plus "instrumental" (the mix minus the target)."""
        from .audio import OUTPUT_FORMATS

        names = list(stems or self.stems)
        unknown = [name for name in names if name not in self.stems]
        if unknown:
            raise ValueError(f"unknown stem(s) {unknown}: this model gives {self.stems}")
        if instrumental and "instrumental" not in names:
            names.append("instrumental")
        extension = OUTPUT_FORMATS[output_format][0]
        return {name: out_dir / template.format(track=track.stem, stem=name, ext=extension) for name in names}

    def separate_file(self, path, out_dir, *, template: str = "{track}/{stem}.{ext}", output_format: str = "wav32f",
                      stems: list[str] | None = None, instrumental: bool = False, overwrite: bool = False,
                      progress: bool | Callable[[float, float], None] = True) -> list[Path]:
        """Separate one audio file into stem files (at the file's rate, length and channel count), streaming in
        blocks; returns the paths written. Existing outputs raise FileExistsError unless `overwrite`. `progress`:
        True for a progress bar, or a callable called as `progress(done_seconds, total_seconds)` of audio."""
        from tqdm import tqdm

        from .audio import AtomicWriter, AudioReader, resampled, resampled_length

        path = Path(path)
        outputs = self.output_paths(path, Path(out_dir), template, output_format, stems, instrumental)
        existing = [str(target) for target in outputs.values() if target.exists()]
        if existing and not overwrite:
            raise FileExistsError(f"outputs exist (use --overwrite to replace them): {', '.join(existing)}")
        target = "vocals" if "vocals" in self.stems else self.stems[0]
        model_stems = [name for name in outputs if name != "instrumental"]
        if "instrumental" in outputs and target not in model_stems:
            model_stems.append(target)  # needed for the instrumental, not written
        with AudioReader(path) as reader:
            info = reader.info
            check_channels(info.channels)
            length = resampled_length(info.frames, info.sample_rate, self.sample_rate)
            mix_queue = deque()  # file-rate mix blocks not yet matched with output (for the instrumental)
            replaced = 0

            def file_blocks():
                nonlocal replaced
                for block in reader.blocks():
                    block = torch.from_numpy(block)
                    replaced += int((~torch.isfinite(block)).sum())
                    block = clean_samples(block)
                    if "instrumental" in outputs:
                        mix_queue.append(block)
                    yield block.numpy()

            def model_rate_blocks():
                for block in resampled(file_blocks(), info.sample_rate, self.sample_rate, info.channels):
                    yield torch.from_numpy(block)

            separated_samples = 0

            def advance(samples: int):
                nonlocal separated_samples
                separated_samples += samples
                bar.update(samples)
                if callable(progress):
                    progress(separated_samples / self.sample_rate, length / self.sample_rate)

            def separated_blocks():
                for separated in self._stream(model_rate_blocks(), length, progress=advance):
                    chosen = torch.stack([separated[self.stems.index(name)] for name in model_stems])
                    yield chosen.reshape(-1, separated.shape[-1]).numpy()

            def output_blocks():
                """{name: (channels, n)} at the file's rate; the instrumental is the file's mix minus the target,
                so the two add up to the original exactly."""
                written = 0
                for block in resampled(separated_blocks(), self.sample_rate, info.sample_rate,
                                       len(model_stems) * info.channels):
                    block = torch.from_numpy(block[:, : info.frames - written])
                    written += block.shape[-1]
                    yield self._split_outputs(block, model_stems, outputs, target, mix_queue, info.channels)
                if written < info.frames:  # resampling can come up a few samples short
                    silence = torch.zeros(len(model_stems) * info.channels, info.frames - written)
                    yield self._split_outputs(silence, model_stems, outputs, target, mix_queue, info.channels)

            writers = {}
            bar = tqdm(total=length, unit="sample", unit_scale=True, desc=path.name, disable=progress is not True,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}")
            try:
                writers = {name: AtomicWriter(file, info.sample_rate, info.channels, output_format)
                           for name, file in outputs.items()}
                written, start = 0, time.perf_counter()
                for blocks in output_blocks():
                    for name, writer in writers.items():
                        writer.write(blocks[name].numpy())
                    written += blocks[name].shape[-1]
                    speed = written / info.sample_rate / max(time.perf_counter() - start, 1e-9)
                    bar.set_postfix_str(f"{speed:.1f} audio-s/s")
                for writer in writers.values():
                    writer.commit()
            except BaseException:
                for writer in writers.values():
                    writer.abort()
                raise
            finally:
                bar.close()
        if replaced:
            warnings.warn(f"{path}: {replaced} NaN or infinite samples were replaced by 0", stacklevel=2)
        return list(outputs.values())

    @staticmethod
    def _split_outputs(block, model_stems, outputs, target, mix_queue, channels) -> dict[str, torch.Tensor]:
        stems = dict(zip(model_stems, block.reshape(len(model_stems), channels, -1)))
        if "instrumental" in outputs:
            stems["instrumental"] = take(mix_queue, block.shape[-1]) - stems[target]
        return {name: stems[name] for name in outputs}


def check_channels(channels: int):
    if channels not in (1, 2):
        raise ValueError(f"audio with {channels} channels is not supported: mix it down to mono or stereo first")


def clean_samples(block: torch.Tensor) -> torch.Tensor:
    """NaN or infinite samples become 0 (a model cannot separate them)."""
    return torch.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)


def take(queue: deque, samples: int) -> torch.Tensor:
    """The next `samples` samples of a queue of (channels, n) blocks."""
    pieces, needed = [], samples
    while needed > 0:
        block = queue.popleft()
        if block.shape[-1] > needed:
            queue.appendleft(block[..., needed:])
            block = block[..., :needed]
        pieces.append(block)
        needed -= block.shape[-1]
    return torch.cat(pieces, dim=-1)


def fit_length(audio: torch.Tensor, length: int) -> torch.Tensor:
    return audio[..., :length] if audio.shape[-1] >= length else F.pad(audio, (0, length - audio.shape[-1]))
