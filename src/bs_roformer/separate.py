"""The Separator: a Roformer with the settings of its config, separating tensors and audio files.

A file's path, one named step after another; each step is a generator of (channels, n) blocks, so a one-hour file
needs the memory of a one-minute one:

    read_blocks        the file, decoded in blocks (audio.AudioReader)
    CleanBlocks        NaN and infinite samples replaced by 0, and counted
    resample           to the model's sample rate (soxr)
    overlap_add        chunks through the model, stitched (chunking.py: the algorithm published figures use)
    resample           back to the file's rate
    fit_stream_length  cut or zero-padded to the file's length (resampling can end a few samples short)
    split_stems        {stem: block}
    with_instrumental  the mixture minus the target stem, sample for sample
    write_stems        each output to `<name>.part`, renamed into place when complete

`Separator.stem_blocks` runs the middle steps (mix blocks in, stem blocks out, both at the file's rate); ensembles,
the web page and scale-out reuse it.
"""

import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import (DEFAULT_TEMPLATE, OUTPUT_FORMATS, AtomicWriter, AudioReader, Track, check_template, resampled,
                    resampled_length)
from .chunking import overlap_add, tta_separate
from .device import autocast, resolve_device, resolve_precision

@dataclass
class FileResult:
    """What `Separator.separate_file` did: the files it wrote and the length of the audio in seconds."""

    paths: list[Path]
    seconds: float


class FileSeparator:
    """What separates tensors and files given `stem_blocks`: the base of `Separator` and of
    `ensemble.EnsembleSeparator`. A subclass sets `name`, `stems`, `target` (the stem the instrumental is the
    mixture minus) and `sample_rate` (the default rate of `separate`), and defines `stem_blocks`."""

    name: str
    stems: list[str]
    target: str
    sample_rate: int

    def stem_blocks(self, mix: Iterator[torch.Tensor], sample_rate: int, frames: int, channels: int,
                    progress: Callable[[float], None] | None = None) -> Iterator[dict[str, torch.Tensor]]:
        raise NotImplementedError

    def separate(self, audio, sample_rate: int | None = None) -> dict[str, torch.Tensor]:
        """audio (channels, samples) or (samples,) at `sample_rate` (default: the model's) -> {stem: tensor of the
        same shape and rate}. NaN and infinite samples are replaced by 0, with a warning."""
        if not isinstance(audio, torch.Tensor):
            raise TypeError(f"audio must be a torch.Tensor shaped (channels, samples), got {type(audio).__name__} "
                            "(for a numpy array, pass torch.from_numpy(array))")
        if audio.ndim not in (1, 2):
            raise ValueError(f"audio must be shaped (channels, samples) or (samples,), got shape {tuple(audio.shape)}")
        if sample_rate is not None and (not isinstance(sample_rate, int) or sample_rate <= 0):
            raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        squeeze = audio.ndim == 1
        audio = audio.reshape(1, -1) if squeeze else audio
        check_channels(audio.shape[0])
        if audio.shape[-1] == 0:
            raise ValueError("the audio is empty (0 samples)")
        cleaned = CleanBlocks([audio.detach().float().cpu().numpy()])
        blocks = list(self.stem_blocks(iter(cleaned), sample_rate or self.sample_rate, audio.shape[-1],
                                       audio.shape[0]))
        if cleaned.replaced:
            warnings.warn(f"{cleaned.replaced} NaN or infinite samples were replaced by 0", stacklevel=2)
        stems = {stem: torch.cat([block[stem] for block in blocks], dim=-1) for stem in self.stems}
        return {stem: audio[0] if squeeze else audio for stem, audio in stems.items()}

    # ---- files ---------------------------------------------------------------------------------------------------

    def output_names(self, stems: list[str] | None = None, instrumental: bool = False) -> list[str]:
        """The outputs asked for: model stems, plus "instrumental" (the mixture minus the target stem)."""
        names = list(stems or self.stems)
        known = [*self.stems, "instrumental"]
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(f"unknown stem(s) {', '.join(unknown)}: this model gives {', '.join(self.stems)} "
                             "(and instrumental)")
        if instrumental and "instrumental" not in names:
            names.append("instrumental")
        return list(dict.fromkeys(names))

    def output_paths(self, track: Track, out_dir: Path, template: str, output_format: str,
                     names: list[str]) -> dict[str, Path]:
        """{output name: path} for a track; the template's fields are TEMPLATE_FIELDS."""
        extension = OUTPUT_FORMATS[output_format][0]
        fields = dict(model=self.name, track=track.name, relpath=track.relpath, ext=extension)
        return {name: Path(out_dir) / template.format(**fields, stem=name) for name in names}

    def separate_file(self, path, out_dir, *, template: str = DEFAULT_TEMPLATE, output_format: str = "wav32f",
                      stems: list[str] | None = None, instrumental: bool = False, overwrite: bool = False,
                      progress: bool | Callable[[float, float], None] = True, track: Track | None = None,
                      reader: AudioReader | None = None) -> FileResult:
        """Separate one audio file into stem files at the file's rate, length and channel count, streaming in
        blocks. Outputs that exist are kept (FileExistsError when all do) unless `overwrite`; the missing ones are
        written. `progress`: a tqdm bar (True), nothing (False), or `progress(done_seconds, total_seconds)`.
        `reader`: the file already opened (an AudioReader, or one with its `info`, `blocks()` and `close()`, as the
        library's read-ahead); it is closed here when the file is read."""
        check_template(template)
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"unknown output format {output_format!r}: use one of {', '.join(OUTPUT_FORMATS)}")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such audio file: {path}")
        track = track or Track.of(path)
        outputs = self.output_paths(track, Path(out_dir), template, output_format, self.output_names(stems, instrumental))
        if not overwrite:
            missing = {name: file for name, file in outputs.items() if not file.exists()}
            if not missing:
                raise FileExistsError(f"outputs exist (use --overwrite to replace them): "
                                      f"{', '.join(map(str, outputs.values()))}")
            outputs = missing
        with reader or AudioReader(path) as audio:
            info = audio.info
            check_channels(info.channels)
            seconds = info.frames / info.sample_rate
            cleaned = CleanBlocks(audio.blocks())
            wants_instrumental = "instrumental" in outputs
            for_model, for_instrumental = readers(cleaned) if wants_instrumental else (iter(cleaned), None)
            bar = FileProgress(progress, path.name, seconds)
            try:
                stem_blocks = self.stem_blocks(for_model, info.sample_rate, info.frames, info.channels, bar.advance)
                if wants_instrumental:
                    stem_blocks = with_instrumental(stem_blocks, for_instrumental, self.target)
                write_stems(stem_blocks, outputs, info.sample_rate, info.channels, output_format)
            finally:
                bar.close()
        if cleaned.replaced:
            warnings.warn(f"{path}: {cleaned.replaced} NaN or infinite samples were replaced by 0", stacklevel=2)
        return FileResult(list(outputs.values()), seconds)


class Separator(FileSeparator):
    """Separates songs with a Roformer model. Build it with `Separator.from_files(config, checkpoint)` (or
    `Separator.demo()`, or from a model and its config dict), then call `separate(audio, sample_rate)` on tensors or
    `separate_file(path, out_dir)` on files.

    Settings default to the config's `inference` section (`chunk_size`, `num_overlap`, `batch_size`), then its
    `audio` section; stem names come from `training.target_instrument` / `training.instruments`. `model` is any
    callable mapping (batch, channels, samples) to stems as the Roformers do (a torch module, or an ONNX runtime
    session wrapped so)."""

    def __init__(self, model, config: dict, *, device="auto", precision="auto", chunk_size: int | None = None,
                 num_overlap: int | None = None, batch_size: int | None = None, tta: bool = False,
                 name: str = "model"):
        from .config import setting, stem_names

        self.device = resolve_device(device)
        self.precision, self.precision_reason = resolve_precision(precision, self.device, config)
        if isinstance(model, torch.nn.Module):
            model = model.to(self.device).eval()
        self.model = model
        if hasattr(model, "match_input_audio_length"):
            model.match_input_audio_length = True  # Mel: every chunk's estimate covers the whole chunk
        self.name = name
        self.sample_rate = setting(config, "audio", "sample_rate", int, 44100)
        self.chunk_size = _positive("chunk_size", chunk_size) or setting(
            config, "inference", "chunk_size", int, None) or setting(config, "audio", "chunk_size", int,
                                                                     8 * self.sample_rate)
        self.num_overlap = _positive("num_overlap", num_overlap) or setting(config, "inference", "num_overlap", int, 2)
        self.batch_size = _positive("batch_size", batch_size) or setting(config, "inference", "batch_size", int, 1)
        for key in ("chunk_size", "num_overlap", "batch_size"):
            _positive(key, getattr(self, key))
        stft = getattr(model, "stft", None)
        if stft is not None and self.chunk_size <= stft.n_fft // 2:
            raise ValueError(f"chunk_size {self.chunk_size} is too short for the model's STFT (n_fft {stft.n_fft}): "
                             f"use a chunk of more than {stft.n_fft // 2} samples (published configs use about 8 s)")
        self.tta = tta
        self.stems = stem_names(config)
        self.target = "vocals" if "vocals" in self.stems else self.stems[0]
        self.model_channels = 2 if getattr(model, "stereo", True) else 1

    @classmethod
    def from_files(cls, config_path, checkpoint_path, model_type: str | None = None, **options) -> "Separator":
        from .config import load_model

        model, config = load_model(config_path, checkpoint_path, model_type)
        options.setdefault("name", "model" if isinstance(checkpoint_path, dict) else Path(checkpoint_path).stem)
        return cls(model, config, **options)

    @classmethod
    def demo(cls, **options) -> "Separator":
        """The small vocal model shipped in the package (trained on synthetic songs; see `bs_roformer.demo`)."""
        from . import demo

        return cls.from_files(demo.CONFIG, demo.WEIGHTS, name="demo", **options)

    @classmethod
    def from_pretrained(cls, model_id: str, progress: bool = True, **options) -> "Separator":
        """A published model by its registry id (`bs-roformer models`), downloaded and sha256-checked on first use."""
        from .pretrained import fetch

        config, checkpoint = fetch(model_id, progress=progress)
        return cls.from_files(config, checkpoint, name=model_id, **options)

    def settings(self) -> dict:
        """What the outputs depend on (the ledger's test for "done with the same settings"); the batch size is left
        out: it changes the speed, and may be lowered after an out-of-memory error."""
        return {"model": self.name, "sample_rate": self.sample_rate, "chunk_size": self.chunk_size,
                "num_overlap": self.num_overlap, "tta": self.tta, "precision": self.precision}

    def describe(self) -> str:
        """One line for a run's header: the model, its stems, device, precision and chunking."""
        return (f"{self.name}: {', '.join(self.stems)} | {self.device}, {self.precision} ({self.precision_reason}) | "
                f"chunks of {self.chunk_size / self.sample_rate:g} s, overlap {self.num_overlap}, "
                f"batch {self.batch_size}{', TTA' if self.tta else ''}")

    # ---- the model on one batch of chunks ------------------------------------------------------------------------

    def separate_chunks(self, batch: torch.Tensor) -> torch.Tensor:
        """(b, channels, chunk) in the file's channel count -> (b, stems, channels, chunk), float32."""
        channels = batch.shape[1]
        if channels == self.model_channels:
            model_input = batch
        elif self.model_channels == 2:  # mono file, stereo model: feed both channels the same signal
            model_input = batch.expand(-1, 2, -1)
        else:  # stereo file, mono model: each channel on its own
            model_input = batch.reshape(-1, 1, batch.shape[-1])
        with torch.inference_mode(), autocast(self.device, self.precision):
            out = self.model(model_input).float()
        if out.ndim == 3:  # one stem
            out = out.unsqueeze(1)
        if channels == self.model_channels:
            return out
        if self.model_channels == 2:
            return out.mean(dim=2, keepdim=True)
        return out.reshape(batch.shape[0], channels, out.shape[1], -1).transpose(1, 2)

    # ---- streams of blocks at the file's rate --------------------------------------------------------------------

    def stem_blocks(self, mix: Iterator[torch.Tensor], sample_rate: int, frames: int, channels: int,
                    progress: Callable[[float], None] | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Separate a mix given as (channels, n) float32 blocks at `sample_rate`, `frames` samples in all; yields
        {stem: (channels, n)} blocks at the same rate, `frames` samples in all. `progress(seconds)` is called with
        each stretch of separated audio."""
        model_rate_mix = resample(mix, sample_rate, self.sample_rate, channels)
        length = resampled_length(frames, sample_rate, self.sample_rate)
        model_call = tta_separate(self.separate_chunks) if self.tta else self.separate_chunks
        separated = overlap_add(model_rate_mix, length, model_call, chunk=self.chunk_size,
                                num_overlap=self.num_overlap, batch_size=self.batch_size, device=self.device,
                                progress=None if progress is None else lambda n: progress(n / self.sample_rate))
        flat = (block.reshape(-1, block.shape[-1]) for block in separated)  # (stems x channels, n)
        at_file_rate = fit_stream_length(resample(flat, self.sample_rate, sample_rate, len(self.stems) * channels),
                                         frames)
        yield from split_stems(at_file_rate, self.stems, channels)

# ---- the steps -----------------------------------------------------------------------------------------------------

class CleanBlocks:
    """The (channels, n) float32 numpy blocks of `blocks` as tensors, NaN and infinite samples replaced by 0 (a
    model cannot separate them); `replaced` counts them."""

    def __init__(self, blocks):
        self.blocks, self.replaced = blocks, 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        for block in self.blocks:
            block = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))
            bad = ~torch.isfinite(block)
            count = int(bad.sum())
            self.replaced += count
            yield block.masked_fill(bad, 0.0) if count else block


def resample(blocks: Iterator[torch.Tensor], rate_in: int, rate_out: int, channels: int) -> Iterator[torch.Tensor]:
    """(channels, n) blocks resampled with soxr (the same samples as resampling the whole signal)."""
    if rate_in == rate_out:
        yield from blocks
        return
    for block in resampled((block.numpy() for block in blocks), rate_in, rate_out, channels):
        yield torch.from_numpy(block)


def fit_stream_length(blocks: Iterator[torch.Tensor], length: int) -> Iterator[torch.Tensor]:
    """The blocks cut, or zero-padded at the end, to `length` samples in all."""
    done, rows = 0, None
    for block in blocks:
        rows = block.shape[:-1]
        block = block[..., : length - done]
        done += block.shape[-1]
        if block.shape[-1]:
            yield block
    if done < length and rows is not None:
        yield torch.zeros(*rows, length - done)


def split_stems(blocks: Iterator[torch.Tensor], stems: list[str], channels: int) -> Iterator[dict[str, torch.Tensor]]:
    """(stems x channels, n) blocks -> {stem: (channels, n)}."""
    for block in blocks:
        yield dict(zip(stems, block.reshape(len(stems), channels, -1)))


def with_instrumental(stem_blocks: Iterator[dict], mix: Iterator[torch.Tensor], target: str) -> Iterator[dict]:
    """Adds "instrumental": the mixture minus the target stem, so the two add up to the mixture exactly."""
    mix = SampleQueue(mix)
    for block in stem_blocks:
        yield {**block, "instrumental": mix.take(block[target].shape[-1]) - block[target]}


def readers(blocks, count: int = 2) -> list[Iterator]:
    """`count` iterators over one stream of blocks (the model's and the instrumental's; an ensemble's members') that
    keep only the blocks the slowest has not read yet; itertools.tee frees items in groups of 57, here minutes of
    audio."""
    source, unread = iter(blocks), [deque() for _ in range(count)]

    def reader(own: deque):
        while own or (block := next(source, None)) is not None:
            if own:
                yield own.popleft()
            else:
                for other in unread:
                    if other is not own:
                        other.append(block)
                yield block

    return [reader(queue) for queue in unread]


class SampleQueue:
    """Takes any number of samples from a stream of (channels, n) blocks."""

    def __init__(self, blocks: Iterator[torch.Tensor]):
        self.blocks, self.pending = iter(blocks), []

    def take(self, samples: int) -> torch.Tensor:
        pieces, needed = [], samples
        while needed > 0:
            block = self.pending.pop() if self.pending else next(self.blocks)
            if block.shape[-1] > needed:
                self.pending.append(block[..., needed:])
                block = block[..., :needed]
            pieces.append(block)
            needed -= block.shape[-1]
        return torch.cat(pieces, dim=-1)


def write_stems(stem_blocks: Iterator[dict[str, torch.Tensor]], outputs: dict[str, Path], sample_rate: int,
                channels: int, output_format: str):
    """Write the outputs named in `outputs` from a stream of {name: block}; all or nothing (on any error, and on
    Ctrl-C, no partial file and no folder made for it is left)."""
    writers = {}
    try:
        for name, file in outputs.items():
            writers[name] = AtomicWriter(file, sample_rate, channels, output_format)
        for blocks in stem_blocks:
            for name, writer in writers.items():
                writer.write(blocks[name].numpy())
        for writer in writers.values():
            writer.commit()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise


class FileProgress:
    """Progress through one file: a tqdm bar (progress=True, with audio-seconds per second), a callable
    `progress(done_seconds, total_seconds)`, or nothing (False)."""

    def __init__(self, progress, name: str, total_seconds: float):
        from tqdm import tqdm

        self.callback = progress if callable(progress) else None
        self.total, self.done = total_seconds, 0.0
        self.bar = tqdm(total=round(total_seconds, 2), unit="audio-s", desc=name, disable=progress is not True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}, {rate_fmt}")

    def advance(self, seconds: float):
        self.done = min(self.done + seconds, self.total)
        self.bar.update(round(self.done, 2) - self.bar.n)
        if self.callback is not None:
            self.callback(self.done, self.total)

    def close(self):
        self.bar.close()


# ---- checks --------------------------------------------------------------------------------------------------------

def check_channels(channels: int):
    if channels not in (1, 2):
        raise ValueError(f"audio with {channels} channels is not supported: mix it down to mono or stereo first")


def _positive(name: str, value: int | None) -> int | None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value
