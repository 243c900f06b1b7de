"""`bs-roformer evaluate`: scoring test sets on disk or through a model, with tables, JSON, CSV and a plot."""

import json
import math

import numpy as np
import pytest
import soundfile
import torch
import yaml

from bs_roformer import BSRoformer
from bs_roformer.cli import main
from bs_roformer.metrics import global_sdr

RATE = 44100


def write(path, audio, rate=RATE):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), audio.T, rate, subtype="FLOAT")


@pytest.fixture
def test_set(tmp_path):
    """Two tracks of vocals + other (+ mixture), and estimates = references + noise of known level."""
    rng = np.random.default_rng(0)
    references, estimates = tmp_path / "test", tmp_path / "estimates"
    for track, noise in (("Artist - One", 0.01), ("Artist - Two", 0.05)):
        stems = {name: (rng.standard_normal((2, 3 * RATE)) * 0.1).astype(np.float32) for name in ("vocals", "other")}
        for name, audio in stems.items():
            write(references / track / f"{name}.wav", audio)
            write(estimates / track / f"{name}.wav", audio + noise * rng.standard_normal(audio.shape).astype(np.float32))
        write(references / track / "mixture.wav", stems["vocals"] + stems["other"])
    return references, estimates


def test_scores_estimates_on_disk_with_json_csv_and_plot(tmp_path, test_set, capsys):
    references, estimates = test_set
    out = tmp_path / "report"
    out.mkdir()
    code = main(["evaluate", "--estimates", str(estimates), "--references", str(references), "-q",
                 "--json", str(out / "scores.json"), "--csv", str(out / "scores.csv"), "--plot", str(out / "sdr.png")])
    assert code == 0
    table = capsys.readouterr().out
    assert "Artist - One" in table and "median" in table and "csdr" in table
    report = json.loads((out / "scores.json").read_text())
    assert set(report["summary"]) == {"vocals", "other"}
    assert set(report["summary"]["vocals"]) == {"sdr", "csdr", "si_sdr", "bleedless", "fullness"}
    one = report["tracks"]["Artist - One"]["vocals"]
    reference, _ = soundfile.read(str(references / "Artist - One" / "vocals.wav"), always_2d=True)
    estimate, _ = soundfile.read(str(estimates / "Artist - One" / "vocals.wav"), always_2d=True)
    assert math.isclose(one["sdr"], global_sdr(reference.T, estimate.T).item(), abs_tol=1e-6)
    assert one["sdr"] > report["tracks"]["Artist - Two"]["vocals"]["sdr"] + 10  # 5x the noise: ~14 dB lower
    assert abs(one["csdr"] - one["sdr"]) < 0.5  # stationary noise: frame SDRs near the global one
    assert len((out / "scores.csv").read_text().splitlines()) == 1 + 4
    assert (out / "sdr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs_are_reported_not_fatal(tmp_path, test_set, capsys):
    references, estimates = test_set
    (estimates / "Artist - One" / "other.wav").unlink()  # missing stem
    audio, _ = soundfile.read(str(estimates / "Artist - Two" / "other.wav"), always_2d=True)
    write(estimates / "Artist - Two" / "other.wav", audio.T[:, : 2 * RATE])  # shorter estimate
    write(references / "Artist - Two" / "vocals.wav", np.zeros((2, 3 * RATE), dtype=np.float32))  # silent
    write(references / "Artist - Three" / "vocals.wav", np.ones((2, RATE), dtype=np.float32) * 0.1)
    write(estimates / "Artist - Three" / "vocals.wav", np.ones((2, 48000), dtype=np.float32) * 0.1, rate=48000)
    assert main(["evaluate", "--estimates", str(estimates), "--references", str(references), "-q",
                 "--json", str(tmp_path / "scores.json")]) == 0
    err = capsys.readouterr().err
    assert "no estimate for stem 'other' in 1 track(s): Artist - One" in err
    assert "Artist - Two/other: estimate has 88200 samples, reference 132300; cut or zero-padded" in err
    assert "Artist - Two/vocals: silent reference, SDR undefined" in err
    assert "Artist - Three: estimates at 48000 Hz, references at 44100 Hz; skipped" in err
    report = json.loads((tmp_path / "scores.json").read_text())
    assert report["summary"]["vocals"]["sdr"]["tracks"] == 1 and math.isfinite(report["summary"]["vocals"]["sdr"]["mean"])
    assert report["tracks"]["Artist - Two"]["vocals"]["sdr"] is None  # undefined, written as null


def test_cli_errors(tmp_path, test_set, capsys):
    references, estimates = test_set
    assert main(["evaluate", "--estimates", str(estimates), "-q"]) == 1
    assert "--estimates needs --references" in capsys.readouterr().err
    assert main(["evaluate", "--estimates", str(estimates), "--references", str(tmp_path / "nowhere"), "-q"]) == 1
    assert "not a folder" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(references), "-q"]) == 1
    assert "give the model as --config CONFIG.yaml --checkpoint WEIGHTS, or use --demo" in capsys.readouterr().err
    assert main(["evaluate", "-c", "config.yaml", "-m", "model.ckpt", "-q"]) == 1
    assert "give --data (and the model)" in capsys.readouterr().err


def test_separates_and_scores_a_test_set_with_a_model(tmp_path, test_set, capsys):
    references, _ = test_set
    write(references / "Artist - One" / "bass.wav", np.zeros((2, 3 * RATE), dtype=np.float32))
    write(references / "Artist - Two" / "bass.wav", np.zeros((2, 3 * RATE), dtype=np.float32))
    model = dict(dim=16, depth=1, heads=2, dim_head=8, stereo=True, num_stems=2, time_transformer_depth=1,
                 freq_transformer_depth=1, stft_hop_length=441)
    config = {"audio": {"sample_rate": RATE, "chunk_size": RATE}, "model": model,
              "training": {"instruments": ["vocals", "other"]}, "inference": {"num_overlap": 2, "batch_size": 2}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    torch.save(BSRoformer(**model).state_dict(), tmp_path / "model.ckpt")
    code = main(["evaluate", "-c", str(tmp_path / "config.yaml"), "-m", str(tmp_path / "model.ckpt"),
                 "--data", str(references), "--device", "cpu", "-q", "--json", str(tmp_path / "scores.json")])
    assert code == 0
    report = json.loads((tmp_path / "scores.json").read_text())
    assert set(report["tracks"]) == {"Artist - One", "Artist - Two"}
    assert report["summary"]["other"]["sdr"]["tracks"] == 2
    # a stem the model does not estimate is noted once for the test set, not once per track
    assert capsys.readouterr().err.splitlines() == ["warning: not scored, the model does not estimate them: bass"]
