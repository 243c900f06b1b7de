"""The GPU paths against the CPU ones: same weights, same input. Skipped where there is no CUDA device; CI has none,
so these run on a GPU machine by hand (`pytest tests/test_cuda.py`)."""

import pytest
import torch

from bs_roformer import BSRoformer, MelBandRoformer
from bs_roformer.separate import Separator
from conftest import with_deterministic_weights
from test_models import TINY_BS, TINY_MEL, snr_db

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
MODELS = [(BSRoformer, TINY_BS), (MelBandRoformer, TINY_MEL)]


@pytest.fixture(autouse=True)
def _exact_float32_matmuls():
    # TF32 would make every CUDA product a 10-bit-mantissa one; the comparisons below are of the float32 paths
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def relative_error(estimate, reference) -> float:
    return ((estimate - reference).abs().max() / reference.abs().max()).item()


@pytest.mark.parametrize("model_class, kwargs", MODELS)
def test_float32_output_and_loss_match_the_cpu(model_class, kwargs):
    model = with_deterministic_weights(model_class(**kwargs, stereo=True, num_stems=2))
    audio, target = torch.randn(2, 2, 9000) * 0.3, torch.randn(2, 2, 2, 9000) * 0.3
    with torch.no_grad():
        cpu_out, cpu_loss = model(audio), model(audio, target=target)
        model.cuda()
        gpu_out, gpu_loss = model(audio.cuda()), model(audio.cuda(), target=target.cuda())
    assert gpu_out.device.type == "cuda"
    assert relative_error(gpu_out.cpu(), cpu_out) < 1e-4
    assert abs(gpu_loss.item() - cpu_loss.item()) < 1e-4 * cpu_loss.item()


@pytest.mark.parametrize("model_class, kwargs", MODELS)
def test_float32_gradients_match_the_cpu(model_class, kwargs):
    model = with_deterministic_weights(model_class(**kwargs, stereo=True)).train()
    audio, target = torch.randn(2, 2, 6000) * 0.3, torch.randn(2, 2, 6000) * 0.3
    model(audio, target=target).backward()
    trainable = [p for p in model.parameters() if p.requires_grad]  # not the rotary frequencies
    cpu_grads = [p.grad.clone() for p in trainable]
    model.zero_grad(set_to_none=True)
    model.cuda()(audio.cuda(), target=target.cuda()).backward()
    for cpu_grad, parameter in zip(cpu_grads, trainable):
        scale = cpu_grad.abs().max().clamp_min(1e-6)
        assert ((parameter.grad.cpu() - cpu_grad).abs().max() / scale).item() < 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("model_class, kwargs", MODELS)
def test_autocast_is_close_to_float32(model_class, kwargs, dtype):
    model = with_deterministic_weights(model_class(**kwargs, stereo=True)).cuda()
    audio = torch.randn(1, 2, 16000, device="cuda") * 0.3
    with torch.no_grad():
        reference = model(audio)
        with torch.autocast("cuda", dtype=dtype):
            fast = model(audio)
    assert fast.dtype == torch.float32
    assert snr_db(fast, reference) > (25 if dtype == torch.bfloat16 else 35)


def test_inductor_compiled_model_matches_eager():
    model = with_deterministic_weights(BSRoformer(**TINY_BS, stereo=True)).cuda()
    audio = torch.randn(2, 2, 9000, device="cuda") * 0.3
    tokens = torch.randn(2, 71, len(TINY_BS["freqs_per_bands"]), TINY_BS["dim"], device="cuda")
    with torch.no_grad():
        eager = model._transform(tokens)
        model.compile_transformer_stack()
        assert relative_error(model._transform(tokens), eager) < 1e-4
        assert model(audio).shape == audio.shape


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_separator_on_cuda_matches_the_cpu(precision):
    config = {"audio": {"sample_rate": 44100, "chunk_size": 8192}, "model": dict(TINY_BS, stereo=True, num_stems=2),
              "training": {"instruments": ["vocals", "other"]}, "inference": {"num_overlap": 2, "batch_size": 3}}
    model = with_deterministic_weights(BSRoformer(**config["model"]))
    audio = torch.randn(2, 30000) * 0.3
    on_cpu = Separator(model, config, device="cpu", precision="fp32").separate(audio, 44100)
    on_gpu = Separator(model, config, device="cuda", precision=precision).separate(audio, 44100)
    for stem in ("vocals", "other"):
        assert on_gpu[stem].device.type == "cpu" and on_gpu[stem].shape == on_cpu[stem].shape
        assert snr_db(on_gpu[stem], on_cpu[stem]) > (80 if precision == "fp32" else 25)
