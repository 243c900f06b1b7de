"""Audio files in and out, in blocks: reading (libsndfile, or ffmpeg for other formats), resampling (soxr), and
atomic writing. Everything here works on (channels, samples) float32 numpy blocks so memory stays bounded."""

import os
import shutil
import string
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

BLOCK_FRAMES = 1 << 18  # ~6 s at 44.1 kHz per read
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".m4a", ".aac", ".opus", ".wma", ".mp4", ".webm"}
# The output path template (`--filename`): its fields, and the default (`separated/demo/clip/vocals.wav`).
TEMPLATE_FIELDS = ("model", "track", "relpath", "stem", "ext")
DEFAULT_TEMPLATE = "{model}/{relpath}/{stem}.{ext}"
OUTPUT_FORMATS = {  # name: (file extension, soundfile format, subtype)
    "wav16": ("wav", "WAV", "PCM_16"),
    "wav24": ("wav", "WAV", "PCM_24"),
    "wav32f": ("wav", "WAV", "FLOAT"),
    "flac16": ("flac", "FLAC", "PCM_16"),
    "flac24": ("flac", "FLAC", "PCM_24"),
}


class AudioError(Exception):
    """A file that cannot be read or written, with the reason in words."""


@dataclass
class AudioInfo:
    path: Path
    sample_rate: int
    channels: int
    frames: int


class AudioReader:
    """Reads a file in blocks. libsndfile formats (WAV, FLAC, OGG, MP3, AIFF) directly; others are decoded to a
    temporary float WAV by ffmpeg when it is on PATH."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._temporary = None
        if not self.path.is_file():
            raise FileNotFoundError(f"no such audio file: {self.path}")
        if self.path.stat().st_size == 0:
            raise AudioError(f"{self.path}: the file is empty (0 bytes)")
        try:
            self._file = soundfile.SoundFile(str(self.path))
        except soundfile.LibsndfileError as error:
            self._file = self._decode_with_ffmpeg(error)
        if self._file.frames <= 0:
            self.close()
            raise AudioError(f"{self.path}: the file holds no audio")
        self.info = AudioInfo(self.path, self._file.samplerate, self._file.channels, self._file.frames)

    def _decode_with_ffmpeg(self, error) -> soundfile.SoundFile:
        ffmpeg = shutil.which("ffmpeg")
        reason = str(error.error_string if hasattr(error, "error_string") else error).removeprefix(f"{self.path}: ")
        if ffmpeg is None:
            raise AudioError(
                f"{self.path}: not an audio file libsndfile can read ({reason}); install ffmpeg to read other "
                "formats, or convert the file to WAV or FLAC"
            ) from None
        handle, name = tempfile.mkstemp(suffix=".wav")
        os.close(handle)
        self._temporary = Path(name)
        result = subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(self.path), "-c:a", "pcm_f32le",
                                 str(self._temporary)], capture_output=True, text=True)
        if result.returncode != 0:
            self._temporary.unlink(missing_ok=True)
            lines = result.stderr.strip().splitlines()
            detail = lines[-1].removeprefix(f"{self.path}: ") if lines else reason
            raise AudioError(f"{self.path}: not readable as audio ({detail})")
        return soundfile.SoundFile(str(self._temporary))

    def blocks(self, frames: int = BLOCK_FRAMES) -> Iterator[np.ndarray]:
        """(channels, n) float32 blocks, in order, covering the whole file."""
        self._file.seek(0)
        while True:
            try:
                block = self._file.read(frames, dtype="float32", always_2d=True)
            except soundfile.LibsndfileError as error:
                raise AudioError(f"{self.path}: corrupt audio data ({error})") from None
            if len(block) == 0:
                return
            yield np.ascontiguousarray(block.T)

    def close(self):
        self._file.close()
        if self._temporary is not None:
            self._temporary.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def resampled(blocks: Iterator[np.ndarray], rate_in: int, rate_out: int, channels: int) -> Iterator[np.ndarray]:
    """Resample a stream of (channels, n) blocks with soxr (HQ); the same samples as resampling the whole signal."""
    if rate_in == rate_out:
        yield from blocks
        return
    stream = soxr.ResampleStream(rate_in, rate_out, channels, dtype="float32", quality="HQ")
    previous = None
    for block in blocks:
        if previous is not None:
            yield stream.resample_chunk(previous.T).T
        previous = block
    if previous is not None:
        yield stream.resample_chunk(previous.T, last=True).T


def resampled_length(frames: int, rate_in: int, rate_out: int) -> int:
    """The number of samples soxr gives for `frames` samples."""
    return frames if rate_in == rate_out else round(frames * rate_out / rate_in)


class AtomicWriter:
    """Writes blocks to `<name>.part` next to the target and renames it into place on `commit()`, so an
    interrupted run never leaves a truncated file under the final name; `abort()` also removes the folders it made."""

    def __init__(self, path: Path, sample_rate: int, channels: int, output_format: str):
        extension, file_format, subtype = OUTPUT_FORMATS[output_format]
        self.path, self.pcm = path, subtype.startswith("PCM")
        self.partial = path.with_name(path.name + ".part")
        self.made_folders = [folder for folder in path.parents if not folder.exists()]  # innermost first
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = soundfile.SoundFile(str(self.partial), "w", sample_rate, channels, subtype, format=file_format)
        except (OSError, soundfile.LibsndfileError) as error:
            self._remove_made_folders()
            raise AudioError(f"cannot write {path}: {error}") from None

    def write(self, block: np.ndarray):
        """(channels, n) float32; PCM output is clipped to [-1, 1]."""
        if self.pcm:
            block = np.clip(block, -1.0, 1.0)
        self._file.write(np.ascontiguousarray(block.T))

    def commit(self):
        self._file.close()
        os.replace(self.partial, self.path)

    def abort(self):
        self._file.close()
        self.partial.unlink(missing_ok=True)
        self._remove_made_folders()

    def _remove_made_folders(self):
        for folder in self.made_folders:
            try:
                folder.rmdir()  # only if empty: another output may be in it
            except OSError:
                return


def fit_length(audio, length: int):
    """A tensor cut, or zero-padded at the end of its last axis, to `length` samples."""
    import torch.nn.functional as F  # a tensor exists, so torch is loaded

    return audio[..., :length] if audio.shape[-1] >= length else F.pad(audio, (0, length - audio.shape[-1]))


@dataclass
class Track:
    """An input file and the names its outputs get: `name` ({track}) is the file's stem, or for a `mixture.*` file
    (the MUSDB18-HQ layout) its folder's name; `relpath` ({relpath}) is its path under the input folder it was
    found in, without the suffix, with the same rule for `mixture.*` (a file given directly: its name)."""

    path: Path
    name: str
    relpath: str

    @classmethod
    def of(cls, path: Path, root: Path | None = None) -> "Track":
        path = Path(path)
        relative = path.relative_to(root) if root is not None else Path(path.name)
        if path.stem.lower() == "mixture" and path.parent.name:
            folder = relative.parent if relative.parent != Path(".") else Path(path.parent.name)
            return cls(path, path.parent.name, folder.as_posix())
        return cls(path, path.stem, relative.with_suffix("").as_posix())


def find_audio(inputs: list[str | Path], exclude: Path | None = None) -> tuple[list[Track], list[str]]:
    """Audio files among `inputs` (files, or folders searched recursively, leaving out the folder `exclude`:
    the output folder, so a re-run does not separate its own outputs); returns (tracks, problems). In a folder that
    holds a `mixture.*` (a track in the MUSDB18-HQ layout) only the mixture is taken: the other files are its stems."""
    tracks, problems = [], []
    excluded = exclude.resolve() if exclude is not None else None
    for item in map(Path, inputs):
        if item.is_dir():
            found = [p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
                     and not (excluded is not None and excluded in p.resolve().parents)]
            mixture_folders = {p.parent for p in found if p.stem.lower() == "mixture"}
            found = sorted(p for p in found if p.parent not in mixture_folders or p.stem.lower() == "mixture")
            if not found:
                problems.append(f"{item}: no audio files in this folder ({', '.join(sorted(AUDIO_SUFFIXES))})")
            tracks += [Track.of(path, item) for path in found]
        elif item.is_file():
            tracks.append(Track.of(item))
        else:
            problems.append(f"{item}: no such file or folder")
    return tracks, problems


def check_template(template: str):
    """A `--filename` template must use only TEMPLATE_FIELDS, include {stem} (else every stem of a track would go to
    one file) and stay inside the output folder."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as error:
        raise ValueError(f"--filename {template!r} is not a valid template ({error})") from None
    unknown = [field for field in fields if field not in TEMPLATE_FIELDS]
    if unknown:
        raise ValueError(f"--filename {template!r}: unknown field {{{unknown[0]}}}; use "
                         f"{', '.join('{' + field + '}' for field in TEMPLATE_FIELDS)}")
    if "stem" not in fields:
        raise ValueError(f"--filename {template!r} has no {{stem}}: every stem would be written to the same file")
    if "ext" not in fields:
        raise ValueError(f"--filename {template!r} has no {{ext}}: end it with .{{ext}} so files get their extension")
    relative = Path(template)
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"--filename {template!r} would write outside the output folder: give a relative "
                         "template and choose the folder with -o")
