"""Separating a long signal with a model that takes fixed-size chunks: MSST's chunked overlap-add, batched and
streaming, with the accumulators on the model's device.

The algorithm (the one published SDR figures were measured with): chunks of `chunk` samples every
`step = chunk // num_overlap`; each chunk's estimate is weighted by a window of ones with linear fades over
`chunk // 10` samples at both ends (no fade-in on the first chunk, no fade-out on the last), and the output is the
weighted average (0 where no weight falls). A track longer than `2 * (chunk - step)` is first reflect-padded by
`chunk - step` on both sides; a short last chunk is padded to `chunk` (reflect when it is longer than half a chunk,
zeros otherwise). compat: MSST drops the end fades per batch, so its result depends on the batch size; here the
windows depend only on the chunk's position.

Input and output stream in blocks: memory is bounded by the chunk and batch sizes, not by the signal's length.
"""

from collections.abc import Callable, Iterator

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


class PaddedStream:
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

    source = PaddedStream(blocks, border)
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
