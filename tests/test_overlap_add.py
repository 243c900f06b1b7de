"""The streaming, batched overlap-add against a plain statement of MSST's chunked separation."""

import pytest
import torch
import torch.nn.functional as F

from bs_roformer.chunking import overlap_add


def toy_model(batch: torch.Tensor) -> torch.Tensor:
    """(b, channels, chunk) -> (b, 2 stems, channels, chunk); depends on the position in the chunk, as a model does."""
    ramp = torch.linspace(1.0, 2.0, batch.shape[-1])
    return torch.stack([torch.tanh(batch * ramp), batch.roll(1, dims=-1) * 0.5], dim=1)


def plain_msst_demix(mix, model, chunk, num_overlap):
    """MSST's demix written plainly, one chunk at a time (its batch_size=1 behaviour), except that the single
    chunk of a one-chunk track also loses its fade-out."""
    step = chunk // num_overlap
    fade = chunk // 10
    border = chunk - step
    length = mix.shape[-1]
    if length > 2 * border and border > 0:
        mix = F.pad(mix[None], (border, border), mode="reflect")[0]
    else:
        border = 0
    padded = mix.shape[-1]
    starts = list(range(0, padded, step))
    result, counter = None, torch.zeros(padded)
    for index, start in enumerate(starts):
        part = mix[:, start : start + chunk]
        real = part.shape[-1]
        if real < chunk:
            part = F.pad(part[None], (0, chunk - real), mode="reflect" if real > chunk // 2 else "constant")[0]
        out = model(part[None])[0]
        if result is None:
            result = torch.zeros(out.shape[0], out.shape[1], padded)
        window = torch.ones(chunk)
        if fade:
            window[:fade] = torch.linspace(0, 1, fade)
            window[-fade:] = torch.linspace(1, 0, fade)
        if index == 0:
            window[:fade] = 1
        if index == len(starts) - 1:
            window[-fade:] = 1
        result[..., start : start + real] += out[..., :real] * window[:real]
        counter[start : start + real] += window[:real]
    estimate = torch.nan_to_num(result / counter, nan=0.0)
    return estimate[..., border : border + length]


def streamed(mix, block):
    return (mix[:, i : i + block] for i in range(0, mix.shape[-1], block))


@pytest.mark.parametrize("length", [37, 600, 1000, 1001, 1500, 4321])
@pytest.mark.parametrize("num_overlap", [1, 2, 4])
def test_matches_plain_algorithm_for_any_batch_and_block_size(length, num_overlap):
    chunk = 500
    mix = torch.randn(2, length)
    expected = plain_msst_demix(mix, toy_model, chunk, num_overlap)
    for batch_size in (1, 3, 16):
        for block in (97, 1 << 16):
            out = torch.cat(list(overlap_add(streamed(mix, block), length, toy_model, chunk=chunk,
                                             num_overlap=num_overlap, batch_size=batch_size)), dim=-1)
            assert out.shape == expected.shape == (2, 2, length)
            assert torch.allclose(out, expected, atol=1e-6), (batch_size, block)


def test_progress_counts_every_sample_once():
    seen = []
    mix = torch.randn(1, 3000)
    blocks = list(overlap_add(streamed(mix, 256), 3000, toy_model, chunk=400, num_overlap=2, batch_size=2,
                              progress=seen.append))
    assert sum(seen) == sum(block.shape[-1] for block in blocks) == 3000
    assert len(blocks) > 3  # output is produced as it goes, not at the end


def test_identity_model_returns_the_mix():
    mix = torch.randn(2, 5000)
    identity = lambda batch: batch[:, None]  # noqa: E731
    out = torch.cat(list(overlap_add(streamed(mix, 1000), 5000, identity, chunk=700, num_overlap=3, batch_size=4)), -1)
    assert torch.allclose(out[0], mix, atol=1e-6)


def test_memory_is_bounded_by_the_chunk_not_the_length():
    """The buffers kept between batches stay a few chunks long however long the input is."""
    from bs_roformer import chunking

    sizes = []
    original = chunking.PaddedStream.drop_before

    def spy(self, position):
        original(self, position)
        sizes.append(self.data.shape[-1])

    chunking.PaddedStream.drop_before = spy
    try:
        mix = torch.randn(1, 200_000)
        for _ in overlap_add(streamed(mix, 1000), 200_000, toy_model, chunk=1000, num_overlap=2, batch_size=2):
            pass
    finally:
        chunking.PaddedStream.drop_before = original
    assert max(sizes) < 5000
