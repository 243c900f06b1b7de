"""Ensembles and shifts: each algorithm against a plain statement of it, streaming against whole signals, shifts
undone exactly, bounded memory, presets, and the CLI."""

import itertools
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from bs_roformer import demo
from bs_roformer.cli import main
from bs_roformer.ensemble import (ALGORITHMS, SPECTRAL_ALGORITHMS, WAVE_ALGORITHMS, EnsembleSeparator,
                                  SpectralCombiner, WaveCombiner, check_weights, combine_whole, shift_delays)
from bs_roformer.separate import Separator, readers


# ---- plain statements of the algorithms ----------------------------------------------------------------------------

def plain_wave(algorithm, stack, weights):
    """Element by element, as the README states it."""
    members = stack.shape[0]
    out = np.zeros(stack.shape[1:])
    for index in np.ndindex(*stack.shape[1:]):
        values = [float(stack[(m, *index)]) for m in range(members)]
        if algorithm == "mean":
            out[index] = sum(w * v for w, v in zip(weights, values))
        elif algorithm == "median":
            out[index] = float(np.median(values))
        elif algorithm == "min":
            out[index] = min(values, key=abs)
        else:
            out[index] = max(values, key=abs)
    return torch.tensor(out, dtype=torch.float32)


def plain_bin(algorithm, values, weights):
    """One time-frequency bin: the members' complex values -> the combined value."""
    mean = sum(w * v for w, v in zip(weights, values))
    if algorithm == "mean_spec":
        return sum(w * abs(v) for w, v in zip(weights, values)) * np.exp(1j * np.angle(mean))
    if algorithm == "median_spec":
        return float(np.median([abs(v) for v in values])) * np.exp(1j * np.angle(mean))
    return (min if algorithm == "min_spec" else max)(values, key=abs)


def plain_spectral(algorithm, stack, weights, n_fft, hop):
    """STFT (periodic Hann, n_fft - hop zeros before, zeros after), combine bin by bin, windowed overlap-add over
    the sum of squared windows; frame by frame in plain numpy."""
    members, channels, length = stack.shape
    lead = n_fft - hop
    padded = np.concatenate([np.zeros((members, channels, lead)), stack.double().numpy(),
                             np.zeros((members, channels, n_fft))], axis=-1)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    out = np.zeros((channels, padded.shape[-1]))
    norm = np.zeros(padded.shape[-1])
    for start in range(0, padded.shape[-1] - n_fft + 1, hop):
        spectra = np.fft.rfft(padded[..., start : start + n_fft] * window, axis=-1)
        combined = np.zeros((channels, spectra.shape[-1]), dtype=complex)
        for channel in range(channels):
            for bin_ in range(spectra.shape[-1]):
                combined[channel, bin_] = plain_bin(algorithm, list(spectra[:, channel, bin_]), weights)
        out[:, start : start + n_fft] += np.fft.irfft(combined, n=n_fft, axis=-1) * window
        norm[start : start + n_fft] += window ** 2
    return torch.tensor(out[:, lead : lead + length] / norm[lead : lead + length], dtype=torch.float32)


def run_stream(combiner, stack, block):
    pieces = [combiner.push(stack[..., i : i + block]) for i in range(0, stack.shape[-1], block)]
    rest = combiner.finish()
    return torch.cat(pieces + ([rest] if rest is not None else []), dim=-1)


@pytest.mark.parametrize("algorithm", list(WAVE_ALGORITHMS))
@pytest.mark.parametrize("members", [2, 3])
def test_wave_algorithms_match_their_statement(algorithm, members):
    torch.manual_seed(members)
    stack = torch.randn(members, 2, 50)
    weights = [2, 1, 1][:members] if algorithm == "mean" else None
    normalised = check_weights(algorithm, weights, members)
    expected = plain_wave(algorithm, stack, normalised.tolist())
    assert torch.allclose(combine_whole(algorithm, stack, weights), expected, atol=1e-6)


@pytest.mark.parametrize("algorithm", list(SPECTRAL_ALGORITHMS))
def test_spectral_algorithms_match_their_statement(algorithm):
    torch.manual_seed(1)
    stack = torch.randn(3, 2, 300)
    weights = [3.0, 1.0, 1.0] if algorithm == "mean_spec" else None
    normalised = check_weights(algorithm, weights, 3)
    combiner = SpectralCombiner(SPECTRAL_ALGORITHMS[algorithm], normalised, n_fft=32, hop=8)
    expected = plain_spectral(algorithm, stack, normalised.tolist(), 32, 8)
    assert torch.allclose(run_stream(combiner, stack, 300), expected, atol=1e-5)


@pytest.mark.parametrize("algorithm", list(SPECTRAL_ALGORITHMS))
def test_spectral_of_one_member_gives_it_back(algorithm):
    signal = torch.randn(1, 2, 10000)
    assert torch.allclose(combine_whole(algorithm, signal), signal[0], atol=1e-5)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_streaming_equals_whole_signal_for_any_block_size(algorithm):
    torch.manual_seed(2)
    stack = torch.randn(2, 2, 3001)
    weights = check_weights(algorithm, None, 2)
    make = (lambda: SpectralCombiner(SPECTRAL_ALGORITHMS[algorithm], weights, n_fft=64, hop=16)) \
        if algorithm in SPECTRAL_ALGORITHMS else (lambda: WaveCombiner(WAVE_ALGORITHMS[algorithm], weights))
    whole = run_stream(make(), stack, stack.shape[-1])
    assert whole.shape == (2, 3001)
    for block in (1, 7, 64, 100, 1000):
        streamed = run_stream(make(), stack, block)
        if algorithm in ("mean_spec", "median_spec"):  # torch's vectorised polar/angle: a float ulp apart
            assert torch.allclose(streamed, whole, rtol=0, atol=1e-6), block
        else:
            assert torch.equal(streamed, whole), block


def test_bad_weights_and_algorithms_are_refused():
    with pytest.raises(ValueError, match="unknown ensemble algorithm"):
        check_weights("avg", None, 2)
    with pytest.raises(ValueError, match="weights apply to mean and mean_spec only"):
        check_weights("max_spec", [1, 2], 2)
    with pytest.raises(ValueError, match="3 weights for 2 models"):
        check_weights("mean", [1, 2, 3], 2)
    with pytest.raises(ValueError, match="non-negative"):
        check_weights("mean", [1, -1], 2)


# ---- separators around tiny modules --------------------------------------------------------------------------------

class Gain(torch.nn.Module):
    """(b, channels, n) -> (b, stems, channels, n): stem s is the input times gains[s], after a position-dependent
    nonlinearity (so that chunk borders matter, as in a real model) unless `identity`."""

    def __init__(self, gains, identity=False):
        super().__init__()
        self.gains, self.identity = gains, identity

    def forward(self, batch):
        shaped = batch if self.identity else torch.tanh(batch * torch.linspace(1, 2, batch.shape[-1]))
        return torch.stack([shaped * gain for gain in self.gains], dim=1)


def separator(stems, gains, identity=False, chunk=1000, rate=44100, name="toy", num_overlap=2):
    config = {"model": {"num_stems": len(stems)}, "training": {"instruments": stems}, "audio": {"sample_rate": rate},
              "inference": {"chunk_size": chunk, "num_overlap": num_overlap, "batch_size": 2}}
    return Separator(Gain(gains, identity), config, device="cpu", precision="fp32", name=name)


def test_two_identical_models_equal_one_model():
    mix = torch.randn(2, 5000)
    single = separator(["vocals", "other"], [0.7, 0.3]).separate(mix)
    for algorithm in ALGORITHMS:
        pair = EnsembleSeparator([separator(["vocals", "other"], [0.7, 0.3])] * 2, algorithm, block=1500)
        ensembled = pair.separate(mix)
        for stem in single:
            if algorithm in WAVE_ALGORITHMS:
                assert torch.equal(ensembled[stem], single[stem]), (algorithm, stem)
            else:  # the STFT round trip
                assert torch.allclose(ensembled[stem], single[stem], atol=1e-5), (algorithm, stem)


def test_stems_are_matched_by_name_and_a_missing_stem_is_left_out():
    mix = torch.randn(2, 4000)
    first = separator(["vocals", "other"], [0.6, 0.4], name="first")
    second = separator(["vocals"], [0.9], chunk=700, name="second")
    with pytest.warns(UserWarning, match="second gives no other"):
        ensemble = EnsembleSeparator([first, second], "mean", weights=[3, 1])
    assert ensemble.stems == ["vocals", "other"] and ensemble.target == "vocals"
    out = ensemble.separate(mix)
    a, b = first.separate(mix), second.separate(mix)
    assert torch.allclose(out["vocals"], 0.75 * a["vocals"] + 0.25 * b["vocals"], atol=1e-6)
    assert torch.equal(out["other"], a["other"])  # one member: its weight renormalised to 1


@pytest.mark.parametrize("algorithm", ["max", "max_spec"])
def test_members_at_different_rates_stream_as_the_whole_signal(algorithm):
    mix = torch.randn(2, 9000)
    members = [separator(["vocals"], [0.8], rate=44100), separator(["vocals"], [0.6], rate=32000, chunk=800)]
    expected = combine_whole(algorithm, torch.stack([member.separate(mix, 44100)["vocals"] for member in members]))
    for block in (1000, 4096, 20000):
        ensemble = EnsembleSeparator(members, algorithm, block=block)
        assert torch.allclose(ensemble.separate(mix, 44100)["vocals"], expected, atol=1e-6), block


@pytest.mark.parametrize("shifts", [1, 2, 3, 5])
def test_shifts_of_the_identity_give_the_identity_exactly(shifts):
    mix = torch.randn(2, 7000)
    # one chunk covers every delayed mix, so the overlap-add is exact too (its fades would round)
    identity = separator(["vocals"], [1.0], identity=True, chunk=40000, num_overlap=1)
    assert torch.equal(identity.separate(mix)["vocals"], mix)
    shifted = EnsembleSeparator([identity], shifts=shifts, block=3000)
    assert torch.equal(shifted.separate(mix)["vocals"], mix)


def test_shift_delays_are_evenly_spread_over_one_hop():
    toy = separator(["vocals"], [1.0], chunk=1000)  # hop 500 at 44.1 kHz
    assert shift_delays(toy, 44100, 4) == [0, 125, 250, 375]
    assert shift_delays(toy, 22050, 2) == [0, 125]


def test_shifts_average_the_delayed_passes():
    mix = torch.randn(2, 6000)
    toy = separator(["vocals"], [1.0], chunk=1000)
    passes = []
    for delay in shift_delays(toy, 44100, 3):
        delayed = torch.cat([torch.zeros(2, delay), mix], dim=-1)
        passes.append(toy.separate(delayed)["vocals"][:, delay:])
    shifted = EnsembleSeparator([toy], shifts=3).separate(mix)["vocals"]
    assert torch.allclose(shifted, sum(passes) / 3, atol=1e-6)
    assert not torch.allclose(shifted, passes[0], atol=1e-3)  # the shifts change the result


def test_memory_is_bounded_by_the_chunks_not_the_length():
    """How far the ensemble reads the mix ahead of what it has given back: the same for a 10x longer mix."""
    members = [separator(["vocals"], [0.5], chunk=1000), separator(["vocals"], [0.7], chunk=3000)]
    ensemble = EnsembleSeparator(members, "max_spec", shifts=2, block=2000)

    def lead(length):
        read = [0]

        def blocks():
            for start in range(0, length, 500):
                read[0] += min(500, length - start)
                yield torch.randn(2, min(500, length - start))

        given, most = 0, 0
        for block in ensemble.stem_blocks(blocks(), 44100, length, 2):
            given += block["vocals"].shape[-1]
            most = max(most, read[0] - given)
        assert given == length
        return most

    # what the members can read ahead: the largest chunk and batch (3000 x 2), a chunk of border, the block and
    # the STFT frame; the rest is where the chunk grid falls at the end
    bound = 3000 * 2 + 3000 + 2000 + 2048
    short, long = lead(20_000), lead(200_000)
    assert long < bound and abs(long - short) < 500


def test_readers_each_give_the_whole_stream_and_keep_only_the_unread():
    blocks = [torch.full((1, 2), float(i)) for i in range(10)]
    first, second, third = readers(iter(blocks), 3)
    assert [int(b[0, 0]) for b in itertools.islice(first, 4)] == [0, 1, 2, 3]
    assert [int(b[0, 0]) for b in itertools.islice(second, 2)] == [0, 1]
    assert [int(b[0, 0]) for b in third] == list(range(10))
    assert [int(b[0, 0]) for b in first] == list(range(4, 10))
    assert [int(b[0, 0]) for b in second] == list(range(2, 10))


# ---- presets and the CLI -------------------------------------------------------------------------------------------

def test_presets_name_supported_registry_models_that_give_the_stem():
    from bs_roformer.presets import PRESETS
    from bs_roformer.pretrained import load_registry

    registry = load_registry()
    for name, preset in PRESETS.items():
        assert preset["algorithm"] in ALGORITHMS, name
        check_weights(preset["algorithm"], preset.get("weights"), len(preset["models"]))
        for model_id in preset["models"]:
            assert model_id in registry and registry[model_id]["unsupported"] is None, (name, model_id)
            assert preset["stem"] in registry[model_id]["stems"], (name, model_id)


def test_models_lists_the_presets(capsys):
    assert main(["models", "--presets"]) == 0
    out = capsys.readouterr().out
    assert "vocals-clean" in out and "unwa-bs-revive2" in out and "bleedless 40.07" in out


def test_cli_ensembles_local_members_and_the_demo_model_twice(tmp_path, capsys):
    clip = tmp_path / "clip.wav"
    audio, rate = sf.read(demo.CLIP, dtype="float32", frames=44100)
    sf.write(clip, audio, rate, subtype="FLOAT")
    args = ["separate", str(clip), "-c", str(demo.CONFIG), "-m", str(demo.WEIGHTS), "--member", str(demo.CONFIG),
            str(demo.WEIGHTS), "--ensemble", "max_spec", "--instrumental", "-q", "-d", "cpu", "--precision", "fp32"]
    assert main([*args, "-o", str(tmp_path / "pair")]) == 0
    assert main(["separate", str(clip), "--demo", "-q", "-d", "cpu", "--precision", "fp32", "--instrumental",
                 "-o", str(tmp_path / "one")]) == 0
    pair, _ = sf.read(next((tmp_path / "pair").rglob("vocals.wav")))
    one, _ = sf.read(next((tmp_path / "one").rglob("vocals.wav")))
    assert pair.shape == one.shape == audio.shape
    assert np.abs(pair - one).max() < 1e-5  # two identical members: one model, through the STFT round trip
    instrumental, _ = sf.read(next((tmp_path / "pair").rglob("instrumental.wav")))
    assert np.abs(instrumental + pair - audio).max() < 1e-6


def test_cli_refuses_weights_that_do_not_fit(tmp_path, capsys):
    code = main(["separate", "--demo", "--member", str(demo.CONFIG), str(demo.WEIGHTS), "--weights", "1,2,3", "-q",
                 "-o", str(tmp_path)])
    assert code == 1
    assert "3 weights for 2 models" in capsys.readouterr().err


def test_cli_shifts_with_one_model(tmp_path, capsys):
    clip = tmp_path / "clip.wav"
    audio, rate = sf.read(demo.CLIP, dtype="float32", frames=30000)
    sf.write(clip, audio, rate, subtype="FLOAT")
    assert main(["separate", str(clip), "--demo", "--shifts", "2", "--tta", "-q", "-d", "cpu", "--precision", "fp32",
                 "-o", str(tmp_path / "out")]) == 0
    stems, _ = sf.read(next((tmp_path / "out").rglob("vocals.wav")))
    assert stems.shape == audio.shape


def test_preset_json_is_shown(capsys):
    assert main(["models", "--presets", "--json"]) == 0
    presets = json.loads(capsys.readouterr().out)
    assert presets["vocals-clean"]["algorithm"] == "min_spec"


def test_cli_preset_errors(tmp_path, capsys):
    assert main(["separate", str(demo.CLIP), "--preset", "nope", "-q", "-o", str(tmp_path)]) == 1
    assert "no preset named 'nope'" in capsys.readouterr().err
    assert main(["separate", str(demo.CLIP), "--preset", "karaoke", "--demo", "-q", "-o", str(tmp_path)]) == 1
    assert "--preset gives the models" in capsys.readouterr().err
