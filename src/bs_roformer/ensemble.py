"""Ensembles of separators and test-time shifts, streaming: better stems from the models people already have.

An ensemble runs each member separator over the same mix and combines, stem by stem, the estimates of the members
that give that stem (matched by name). The algorithms, for members m = 1..M with weights w_m summing to 1:

    on waveforms, per sample:
      mean         sum_m w_m x_m
      median       the median of the x_m (for an even M, the mean of the two middle values)
      min, max     the x_m with the smallest / largest |x_m| (the first such member on ties)
    on spectrograms (the STFT below), per time-frequency bin, then the inverse STFT:
      mean_spec    magnitude sum_m w_m |X_m|, with the phase of sum_m w_m X_m
      median_spec  magnitude the median of the |X_m|, with the phase of sum_m w_m X_m
      min_spec     the X_m with the smallest magnitude (UVR's min_spec: that member's magnitude and phase)
      max_spec     the X_m with the largest magnitude (UVR's max_spec)

Weights are only for mean and mean_spec (uniform otherwise); a stem some members lack is combined over those that
give it, their weights renormalised. The STFT is a periodic Hann window of N_FFT samples every HOP samples at the
file's rate, on the signal with N_FFT - HOP zeros before it and zeros after it, so that every sample lies under
N_FFT / HOP frames; the inverse is the windowed overlap-add divided by the sum of the squared windows over a sample
(the same for every sample). Applied to one member it gives that member's signal back to float rounding.

Shifts (MSST's BigShifts, made streamable): pass k = 0..K-1 delays the mix by d_k = k * step // K samples (zeros
before it), separates it, and drops the first d_k output samples; the K estimates are averaged. `step` is the
member's overlap-add hop (chunk_size // num_overlap) at the file's rate, so the K passes put the chunk borders at K
evenly spaced places: the offsets are fixed by the member's settings (deterministic, no seed). Each shift costs one
more full separation. MSST instead rotates the whole track circularly by i * (length // K), which needs the whole
track in memory.

Streaming: each member's `stem_blocks` reads its own reader of the mix (`separate.readers`), and its output is
re-blocked to BLOCK samples, so members run one after another within a block. The readers hold only the mix between
the furthest and the least advanced member (about one chunk and batch of the member that reads furthest ahead), so
memory is bounded by the members' chunk and batch sizes, not by the song's length, and nothing is written to disk
(running each member over the whole file in turn would need every member's stems in temporary files).
"""

import itertools
import warnings
from collections.abc import Callable, Iterator

import torch

from .separate import FileSeparator, SampleQueue, readers

N_FFT = 2048
HOP = 512
BLOCK = 1 << 16  # samples per combined block, at the file's rate


# ---- the algorithms: members stacked on dim 0, weights (members,) summing to 1 -------------------------------------

def weighted_mean(stack: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (stack * weights.reshape(-1, *[1] * (stack.ndim - 1)).to(stack.dtype)).sum(0)


def median(stack: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The median over members; for an even count, the mean of the two middle values (weights unused)."""
    ordered = stack.sort(dim=0).values
    count = stack.shape[0]
    return (ordered[(count - 1) // 2] + ordered[count // 2]) / 2


def by_magnitude(stack: torch.Tensor, better: Callable) -> torch.Tensor:
    """Per element, the member value whose magnitude is `better` than every earlier member's (the first on ties);
    a running choice over members, which is much faster than an argmax over the members' dimension."""
    chosen, chosen_magnitude = stack[0], stack[0].abs()
    for values in stack[1:]:
        magnitude = values.abs()
        take = better(magnitude, chosen_magnitude)
        chosen, chosen_magnitude = torch.where(take, values, chosen), torch.where(take, magnitude, chosen_magnitude)
    return chosen


def smallest(stack: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per element, the member value of the smallest magnitude (complex values: the whole value; weights unused)."""
    return by_magnitude(stack, torch.lt)


def largest(stack: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per element, the member value of the largest magnitude (complex values: the whole value; weights unused)."""
    return by_magnitude(stack, torch.gt)


def magnitude_mean(spectra: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The weighted mean of the magnitudes, with the phase of the weighted mean of the complex values."""
    return torch.polar(weighted_mean(spectra.abs(), weights), weighted_mean(spectra, weights).angle())


def magnitude_median(spectra: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The median of the magnitudes, with the phase of the weighted mean of the complex values."""
    return torch.polar(median(spectra.abs(), weights), weighted_mean(spectra, weights).angle())


WAVE_ALGORITHMS = {"mean": weighted_mean, "median": median, "min": smallest, "max": largest}
SPECTRAL_ALGORITHMS = {"mean_spec": magnitude_mean, "median_spec": magnitude_median, "min_spec": smallest,
                       "max_spec": largest}
ALGORITHMS = [*WAVE_ALGORITHMS, *SPECTRAL_ALGORITHMS]
WEIGHTED = ("mean", "mean_spec")


# ---- combining streams ---------------------------------------------------------------------------------------------

class WaveCombiner:
    """Combines (members, channels, n) blocks sample by sample: each output block matches its input block."""

    def __init__(self, combine: Callable, weights: torch.Tensor):
        self.combine, self.weights = combine, weights

    def push(self, stack: torch.Tensor) -> torch.Tensor:
        return self.combine(stack, self.weights)

    def finish(self) -> torch.Tensor | None:
        return None


class SpectralCombiner:
    """Combines (members, channels, n) blocks bin by bin in the STFT of the module docstring, streaming: frames are
    taken as soon as their samples are in, and output samples are given once no later frame overlaps them, so the
    output lags the input by less than N_FFT samples. Each output sample sums its frames oldest first, so it is
    the same sum however the stream is cut into blocks (bit for bit with min_spec and max_spec;
    mean_spec and median_spec can differ by a float ulp, from torch's vectorised polar and angle)."""

    def __init__(self, combine: Callable, weights: torch.Tensor, n_fft: int = N_FFT, hop: int = HOP):
        if n_fft % hop:
            raise ValueError(f"the STFT hop ({hop}) must divide n_fft ({n_fft})")
        self.combine, self.weights, self.n_fft, self.hop = combine, weights, n_fft, hop
        self.window = torch.hann_window(n_fft)
        # every signal sample lies under n_fft / hop frames: the squared windows over it sum to this, by its phase
        self.norm = (self.window ** 2).reshape(n_fft // hop, hop).sum(0)
        self.pending = None  # input samples not yet in a frame (and the last n_fft - hop that are, for the next)
        self.tail = None  # overlap-added output of the last frames, awaiting the next frames' parts
        self.lead = n_fft - hop  # output samples still to drop: the zeros before the signal
        self.members = self.channels = None
        self.pushed = self.given = 0

    def push(self, stack: torch.Tensor) -> torch.Tensor:
        if self.pending is None:
            self.members, self.channels = stack.shape[:2]
            self.pending = stack.new_zeros(self.members, self.channels, self.n_fft - self.hop)
            self.tail = stack.new_zeros(self.channels, self.n_fft - self.hop)
        self.pushed += stack.shape[-1]
        self.pending = torch.cat([self.pending, stack], dim=-1)
        count = (self.pending.shape[-1] - self.n_fft) // self.hop + 1
        if count <= 0:
            return stack.new_zeros(self.channels, 0)
        frames = self.pending[..., : (count - 1) * self.hop + self.n_fft].unfold(-1, self.n_fft, self.hop)
        spectra = torch.fft.rfft(frames * self.window, dim=-1)  # (members, channels, count, bins)
        combined = torch.fft.irfft(self.combine(spectra, self.weights), n=self.n_fft, dim=-1) * self.window
        # overlap-add in hops: frame i's part r lands on hop i + r; adding r = R-1 down to 0 adds each hop's frames
        # oldest first, after the tail (older frames still): the same order for any cut of the stream
        overlaps = self.n_fft // self.hop
        parts = combined.reshape(self.channels, count, overlaps, self.hop)
        out = torch.cat([self.tail.reshape(self.channels, overlaps - 1, self.hop),
                         stack.new_zeros(self.channels, count, self.hop)], dim=1)
        for part in reversed(range(overlaps)):
            out[:, part : part + count] += parts[:, :, part]
        out = out.reshape(self.channels, -1)
        self.pending = self.pending[..., count * self.hop :]
        self.tail = out[:, count * self.hop :]
        done = out[:, : count * self.hop] / self.norm.repeat(count)
        dropped = min(self.lead, done.shape[-1])
        self.lead -= dropped
        done = done[:, dropped:]
        self.given += done.shape[-1]
        return done

    def finish(self) -> torch.Tensor | None:
        """The rest of the output: the signal's last samples, under frames that reach into the zeros after it."""
        if self.pending is None:
            return None
        length = self.pushed
        rest = self.push(self.pending.new_zeros(self.members, self.channels, self.n_fft))
        return rest[:, : length - (self.given - rest.shape[-1])]


def combiner_for(algorithm: str, weights: torch.Tensor):
    if algorithm in WAVE_ALGORITHMS:
        return WaveCombiner(WAVE_ALGORITHMS[algorithm], weights)
    return SpectralCombiner(SPECTRAL_ALGORITHMS[algorithm], weights)


def combine_whole(algorithm: str, stack: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The ensemble of whole signals: (members, channels, n) -> (channels, n); uniform weights by default."""
    weights = check_weights(algorithm, weights, stack.shape[0])
    combiner = combiner_for(algorithm, weights)
    pieces = [combiner.push(stack), combiner.finish()]
    return torch.cat([piece for piece in pieces if piece is not None], dim=-1)


def check_weights(algorithm: str, weights, members: int) -> torch.Tensor:
    """The weights as a tensor summing to 1 (uniform when None); one clear error for anything else."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown ensemble algorithm {algorithm!r}: use one of {', '.join(ALGORITHMS)}")
    if weights is None:
        return torch.full((members,), 1.0 / members)
    if algorithm not in WEIGHTED:
        raise ValueError(f"weights apply to {' and '.join(WEIGHTED)} only, not to {algorithm}")
    weights = torch.as_tensor(weights, dtype=torch.float64).flatten()
    if len(weights) != members:
        raise ValueError(f"{len(weights)} weights for {members} models: give one weight per model")
    if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all 0, got {weights.tolist()}")
    return (weights / weights.sum()).float()


# ---- shifts --------------------------------------------------------------------------------------------------------

def shift_delays(separator, sample_rate: int, shifts: int) -> list[int]:
    """d_k = k * step // shifts for k = 0..shifts-1, `step` the separator's overlap-add hop at `sample_rate`."""
    step = max(separator.chunk_size // separator.num_overlap, 1) * sample_rate // separator.sample_rate
    return [k * step // shifts for k in range(shifts)]


def delayed_stems(separator, mix: Iterator[torch.Tensor], sample_rate: int, frames: int, channels: int, delay: int,
                  progress) -> Iterator[torch.Tensor]:
    """(stems, channels, n) blocks, `frames` in all: the separator's stems of the mix delayed by `delay` samples
    (zeros before it), the first `delay` output samples dropped."""
    delayed = itertools.chain([torch.zeros(channels, delay)], mix) if delay else mix
    to_drop = delay
    for block in separator.stem_blocks(delayed, sample_rate, frames + delay, channels, progress):
        stacked = torch.stack([block[stem] for stem in separator.stems])
        dropped = min(to_drop, stacked.shape[-1])
        to_drop -= dropped
        if stacked.shape[-1] > dropped:
            yield stacked[..., dropped:]


def shifted_stems(separator, mix: Iterator[torch.Tensor], sample_rate: int, frames: int, channels: int,
                  shifts: int, progress, block: int = BLOCK) -> Iterator[torch.Tensor]:
    """(stems, channels, n) blocks, `frames` in all: the average of the `shifts` delayed passes."""
    delays = shift_delays(separator, sample_rate, shifts)
    if delays == [0]:
        yield from delayed_stems(separator, mix, sample_rate, frames, channels, 0, progress)
        return
    passes = [SampleQueue(delayed_stems(separator, branch, sample_rate, frames, channels, delay, progress))
              for branch, delay in zip(readers(mix, shifts), delays)]
    for start in range(0, frames, block):
        estimates = [queue.take(min(block, frames - start)) for queue in passes]
        # the first estimate plus the mean difference, so that equal estimates average to exactly that estimate
        first = estimates[0]
        yield first + sum(estimate - first for estimate in estimates[1:]) / shifts


# ---- the ensemble separator ----------------------------------------------------------------------------------------

class EnsembleSeparator(FileSeparator):
    """Several separators combined stem by stem with one of ALGORITHMS (the module docstring defines them), each
    member optionally averaged over `shifts` delayed passes; `separate(audio, sample_rate)` and
    `separate_file(path, out_dir, ...)` as `Separator`'s, streaming.

    Stems are matched by name: the ensemble gives every stem some member gives (in the order the members give
    them), each the combination of the members that give it. The target (for the instrumental: the mixture minus
    the ensembled target) is vocals if some member gives it, else the first stem."""

    def __init__(self, separators, algorithm: str = "mean", weights=None, shifts: int = 1, name: str | None = None,
                 block: int = BLOCK):
        self.separators = list(separators)
        if not self.separators:
            raise ValueError("an ensemble needs at least one separator")
        if not isinstance(shifts, int) or shifts < 1:
            raise ValueError(f"shifts must be a positive integer, got {shifts!r}")
        self.weights = check_weights(algorithm, weights, len(self.separators))
        self.algorithm, self.shifts, self.block = algorithm, shifts, block
        self.name = name or "+".join(separator.name for separator in self.separators)
        self.stems = list(dict.fromkeys(stem for separator in self.separators for stem in separator.stems))
        self.target = "vocals" if "vocals" in self.stems else self.stems[0]
        self.sample_rate = self.separators[0].sample_rate
        self.members_of = {stem: [index for index, separator in enumerate(self.separators) if stem in separator.stems]
                           for stem in self.stems}
        self.notes = [f"{separator.name} gives no {stem}: {stem} is the ensemble of the other models"
                      for stem in self.stems for separator in self.separators
                      if stem not in separator.stems and len(self.separators) > 1]
        for note in self.notes:
            warnings.warn(note, stacklevel=2)

    def settings(self) -> dict:
        """What the outputs depend on: the algorithm, weights, shifts and each member's settings."""
        return {"ensemble": self.algorithm, "weights": self.weights.tolist(), "shifts": self.shifts,
                "members": [separator.settings() for separator in self.separators]}

    def describe(self) -> str:
        weights = f", weights {', '.join(f'{w:.3g}' for w in self.weights.tolist())}" \
            if self.algorithm in WEIGHTED and len(self.separators) > 1 else ""
        head = (f"{self.name}: {self.algorithm} of {len(self.separators)} model(s){weights}"
                f"{f', {self.shifts} shifts' if self.shifts > 1 else ''} | {', '.join(self.stems)}")
        return "\n".join([head, *(f"  {separator.describe()}" for separator in self.separators)])

    def stem_weights(self, stem: str) -> torch.Tensor:
        """The weights of the members that give `stem`, renormalised (uniform if they are all 0)."""
        weights = self.weights[self.members_of[stem]]
        return weights / weights.sum() if weights.sum() > 0 else torch.full_like(weights, 1 / len(weights))

    def stem_blocks(self, mix: Iterator[torch.Tensor], sample_rate: int, frames: int, channels: int,
                    progress: Callable[[float], None] | None = None) -> Iterator[dict[str, torch.Tensor]]:
        passes = len(self.separators) * self.shifts
        advance = None if progress is None else (lambda seconds: progress(seconds / passes))
        members = [SampleQueue(shifted_stems(separator, branch, sample_rate, frames, channels, self.shifts, advance,
                                             self.block))
                   for separator, branch in zip(self.separators, readers(mix, len(self.separators)))]
        combiners = {stem: combiner_for(self.algorithm, self.stem_weights(stem)) for stem in self.stems}
        for start in range(0, frames, self.block):
            estimates = [member.take(min(self.block, frames - start)) for member in members]
            combined = {stem: combiner.push(torch.stack([
                estimates[index][self.separators[index].stems.index(stem)] for index in self.members_of[stem]]))
                for stem, combiner in combiners.items()}
            if combined[self.stems[0]].shape[-1]:
                yield combined
        rest = {stem: combiner.finish() for stem, combiner in combiners.items()}
        if rest[self.stems[0]] is not None and rest[self.stems[0]].shape[-1]:
            yield rest
