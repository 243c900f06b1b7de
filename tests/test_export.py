"""ONNX export: the graph (STFT and iSTFT inside) run by onnxruntime gives the PyTorch model's stems.

Tolerance: the issue's 1e-4 of the largest output, in fp32 (measured: about 1e-6 for every configuration below).
"""

import json

import numpy as np
import pytest
import soundfile
import torch
import yaml

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from bs_roformer import BSRoformer, MelBandRoformer  # noqa: E402
from bs_roformer.cli import main  # noqa: E402
from bs_roformer.config import load_model  # noqa: E402
from bs_roformer.export import ExportedRoformer, OnnxModel, export_onnx, file_sha256, onnx_separator  # noqa: E402

CHUNK = 8820  # 0.2 s at 44.1 kHz
TOLERANCE = 1e-4  # of the largest output
TINY = dict(dim=16, depth=2, dim_head=8, heads=2, time_transformer_depth=1, freq_transformer_depth=1)
BS_BANDS = [32] * 8 + [64] * 4 + [128] * 2 + [257]  # 15 bands in 4 groups: exports faster than the default 62


def relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    return ((reference - other).abs().max() / reference.abs().max()).item()


def check_round_trip(model, onnx_path, batches=(1, 3)):
    """The torch model and the ONNX model agree on chunks of each batch size (the batch axis is dynamic)."""
    onnx_model = OnnxModel(onnx_path)
    if isinstance(model, MelBandRoformer):
        model.match_input_audio_length = True  # as the Separator runs it; the graph gives the chunk's length
    for batch in batches:
        audio = torch.randn(batch, model.audio_channels, CHUNK)
        with torch.no_grad():
            expected = model(audio)
        got = onnx_model(audio)
        assert got.shape == expected.shape
        assert relative_error(expected, got) < TOLERANCE


def export_tiny(model_class, tmp_path, **options):
    torch.manual_seed(0)
    model = model_class(**TINY, **options).eval()
    stems = [f"stem{index}" for index in range(model.num_stems)]
    config = {"model": {"num_stems": model.num_stems}, "audio": {"sample_rate": 44100, "chunk_size": CHUNK},
              "training": {"instruments": stems}}
    with torch.no_grad():  # a model that has run holds inference caches, which the export's copy must take
        model(torch.randn(1, model.audio_channels, CHUNK))
    path = tmp_path / "model.onnx"
    metadata = export_onnx(model, config, path, source_id="tiny", checkpoint_sha256="0" * 64)
    return model, path, metadata


@pytest.mark.parametrize("stft_options", [
    dict(stft_hop_length=441),
    dict(stft_hop_length=512, stft_win_length=1536, stft_normalized=True),  # window padded into n_fft; scaled
])
def test_real_valued_stft_path_matches_the_model(stft_options):
    """The graph's computation run eagerly in torch (no export): DFT-basis STFT, real mask multiply, overlap-add iSTFT
    against torch.stft / torch.istft with complex masks."""
    torch.manual_seed(0)
    model = BSRoformer(**TINY, stereo=True, num_stems=2, freqs_per_bands=BS_BANDS, **stft_options).eval()
    audio = torch.randn(2, 2, CHUNK)
    with torch.no_grad():
        assert relative_error(model(audio), ExportedRoformer(model, CHUNK)(audio)) < TOLERANCE


@pytest.fixture(scope="module")
def bs_files(tmp_path_factory):
    """A tiny BS-RoFormer with every option the export must carry (stereo, two stems, hop 441, zero_dc, skip
    connections, linear attention) as config + checkpoint files, exported with the CLI."""
    folder = tmp_path_factory.mktemp("bs")
    torch.manual_seed(0)
    options = dict(stereo=True, num_stems=2, stft_hop_length=441, zero_dc=True, skip_connection=True,
                   linear_transformer_depth=1, freqs_per_bands=BS_BANDS)
    model = BSRoformer(**TINY, **options)
    config = {"model": {**TINY, **options}, "audio": {"sample_rate": 44100, "chunk_size": CHUNK},
              "training": {"instruments": ["vocals", "other"], "model_type": "bs_roformer"},
              "inference": {"num_overlap": 2, "batch_size": 2}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    torch.save(model.state_dict(), folder / "model.ckpt")
    onnx_path = folder / "model.onnx"
    assert main(["export", "-c", str(folder / "config.yaml"), "-m", str(folder / "model.ckpt"),
                 "-o", str(onnx_path)]) == 0
    return folder


def test_bs_export_matches_torch_and_carries_metadata(bs_files):
    model, _ = load_model(bs_files / "config.yaml", bs_files / "model.ckpt")
    check_round_trip(model, bs_files / "model.onnx")
    metadata = OnnxModel(bs_files / "model.onnx").metadata
    assert metadata["sample_rate"] == "44100"
    assert metadata["chunk_size"] == str(CHUNK)
    assert metadata["num_overlap"] == "2"
    assert json.loads(metadata["stems"]) == ["vocals", "other"]
    assert metadata["audio_channels"] == "2"
    assert metadata["model_type"] == "BSRoformer"
    assert metadata["source_model"] == "model.ckpt"
    assert metadata["checkpoint_sha256"] == file_sha256(bs_files / "model.ckpt")
    assert metadata["precision"] == "fp32"


def test_mel_export_matches_torch(tmp_path):
    model, path, metadata = export_tiny(MelBandRoformer, tmp_path, stereo=False, num_stems=1, stft_hop_length=512,
                                        zero_dc=False, num_bands=16)
    check_round_trip(model, path)
    assert OnnxModel(path).metadata == metadata


@pytest.mark.slow
@pytest.mark.parametrize("model_class, options", [
    (BSRoformer, dict(stereo=False, num_stems=1, stft_hop_length=512, zero_dc=False)),  # the default 62 bands
    (MelBandRoformer, dict(stereo=True, num_stems=3, stft_hop_length=441, zero_dc=True, skip_connection=True,
                           linear_transformer_depth=1, num_bands=16)),
])
def test_more_configurations_export(tmp_path, model_class, options):
    model, path, _ = export_tiny(model_class, tmp_path, **options)
    check_round_trip(model, path)


@pytest.mark.slow
def test_fp16_export_is_close_to_fp32(tmp_path):
    torch.manual_seed(0)
    model = BSRoformer(**TINY, stereo=True, stft_hop_length=441, freqs_per_bands=BS_BANDS).eval()
    config = {"model": {}, "audio": {"sample_rate": 44100, "chunk_size": CHUNK}}
    paths = {}
    for name, fp16 in (("fp32", False), ("fp16", True)):
        paths[name] = tmp_path / f"{name}.onnx"
        export_onnx(model, config, paths[name], source_id="tiny", checkpoint_sha256="0" * 64, fp16=fp16)
    audio = torch.randn(2, 2, CHUNK)
    full, half = OnnxModel(paths["fp32"])(audio), OnnxModel(paths["fp16"])(audio)
    snr = 10 * torch.log10(full.pow(2).sum() / (full - half).pow(2).sum())
    assert snr > 50  # measured 63 dB at this size
    assert OnnxModel(paths["fp16"]).metadata["precision"] == "fp16"


def test_onnxruntime_backend_separates_like_torch(bs_files, tmp_path):
    rng = np.random.default_rng(0)
    song = tmp_path / "song.wav"
    soundfile.write(song, (0.1 * rng.standard_normal((30000, 2))).astype(np.float32), 44100, subtype="FLOAT")
    common = [str(song), "--format", "wav32f", "-q"]
    assert main(["separate", *common, "-c", str(bs_files / "config.yaml"), "-m", str(bs_files / "model.ckpt"),
                 "--device", "cpu", "-o", str(tmp_path / "torch")]) == 0
    assert main(["separate", *common, "--backend", "onnxruntime", "--onnx", str(bs_files / "model.onnx"),
                 "-o", str(tmp_path / "onnx")]) == 0
    for stem in ("vocals", "other"):
        expected, _ = soundfile.read(tmp_path / "torch" / "model" / "song" / f"{stem}.wav")
        got, _ = soundfile.read(tmp_path / "onnx" / "model" / "song" / f"{stem}.wav")
        assert got.shape == expected.shape == (30000, 2)
        assert np.abs(got - expected).max() / np.abs(expected).max() < TOLERANCE


def test_bad_requests_are_named(bs_files, tmp_path, capsys):
    with pytest.raises(ValueError, match="exported for chunks of 8820"):
        onnx_separator(bs_files / "model.onnx", chunk_size=4410)
    with pytest.raises(ValueError, match="not in this onnxruntime build"):
        OnnxModel(bs_files / "model.onnx", provider="nonexistent")
    with pytest.raises(ValueError, match=r"takes \(batch, 2, 8820\) chunks"):
        OnnxModel(bs_files / "model.onnx")(torch.zeros(1, 2, 100))
    assert main(["export", "-c", str(bs_files / "config.yaml"), "-m", str(bs_files / "model.ckpt"),
                 "-o", str(bs_files / "model.onnx")]) == 1
    assert "exists (use --overwrite" in capsys.readouterr().err
    song = tmp_path / "song.wav"
    soundfile.write(song, np.zeros((1000, 2), dtype=np.float32), 44100)
    assert main(["separate", str(song), "--backend", "onnxruntime", "--onnx", str(bs_files / "model.onnx"),
                 "--precision", "bf16", "-o", str(tmp_path)]) == 1
    assert "precision is fixed at export" in capsys.readouterr().err
