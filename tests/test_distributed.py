"""Data-parallel training: a 2-process step (gloo, CPU) has the gradients of one process over the combined batch,
both for PyTorch's DDP on our items and for the training loop's own DDP path (`train()` in 2 processes)."""

import os
import socket

import torch
import torch.multiprocessing as mp

from bs_roformer.config import build_model
from bs_roformer.data.musdb import StemChunks
from bs_roformer.data.synth import write_dataset
from bs_roformer.train import rank_items, setup_distributed, train

CONFIG = {"model": dict(dim=16, depth=1, heads=2, dim_head=8, stereo=True, time_transformer_depth=1,
                        freq_transformer_depth=1, stft_n_fft=512, stft_win_length=512, stft_hop_length=128,
                        freqs_per_bands=(2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64, 69),
                        multi_stft_resolutions_window_sizes=(512, 256)),
          "training": {"model_type": "bs_roformer"}}
STEMS = ["vocals", "drums", "bass", "other"]


def gradients(folder, rank: int, world: int, batch: int, distributed: bool) -> dict:
    torch.manual_seed(0)
    model = build_model(CONFIG, "bs_roformer")
    dataset = StemChunks(folder, STEMS, chunk_samples=4096, items_per_epoch=16, seed=3)
    items = [dataset[index] for index in rank_items(range(0, 1), rank, world, batch)]
    mixture, stems = torch.stack([item[0] for item in items]), torch.stack([item[1] for item in items])
    network = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    network(mixture, target=stems[:, 0]).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def worker(rank: int, world: int, port: int, folder: str, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    assert setup_distributed(torch.device("cpu"))[:2] == (rank, world)
    grads = gradients(folder, rank, world, batch=2, distributed=True)
    if rank == 0:
        torch.save(grads, out)
    torch.distributed.barrier()  # rank 0 hosts the store: nobody tears down while another rank still needs it
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_step_equals_one_process_over_the_combined_batch(tmp_path):
    write_dataset(tmp_path / "data", tracks=2, seconds=1.0, seed=4)
    out = tmp_path / "ddp_grads.pt"
    mp.spawn(worker, args=(2, free_port(), str(tmp_path / "data"), str(out)), nprocs=2, join=True)
    distributed = torch.load(out, weights_only=True)
    single = gradients(tmp_path / "data", rank=0, world=1, batch=4, distributed=False)
    assert distributed.keys() == single.keys() and len(single) > 10
    for name, grad in single.items():
        assert torch.allclose(distributed[name], grad, rtol=1e-4, atol=1e-7), name


def test_rank_items_split_each_micro_batch_between_ranks():
    assert rank_items(range(0, 2), 0, 2, 3) == [0, 1, 2, 6, 7, 8]
    assert rank_items(range(0, 2), 1, 2, 3) == [3, 4, 5, 9, 10, 11]
    assert rank_items(range(1, 2), 0, 1, 4) == [4, 5, 6, 7]


LOOP_CONFIG = {"audio": {"chunk_size": 4096}, "model": dict(CONFIG["model"], attn_dropout=0.0, ff_dropout=0.0),
               "training": {"model_type": "bs_roformer", "instruments": STEMS, "target_instrument": "vocals",
                            "batch_size": 1, "num_epochs": 1, "num_steps": 2, "optimizer": "sgd", "lr": 0.1,
                            "use_amp": False, "seed": 3}}


def loop_worker(rank: int, world: int, port: int, folder: str, run: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train(LOOP_CONFIG, folder, run, progress=False, report=lambda line: None)
    torch.distributed.destroy_process_group()


def test_the_training_loop_in_two_processes_equals_one_process_over_the_combined_batch(tmp_path):
    write_dataset(tmp_path / "data", tracks=2, seconds=1.0, seed=4)
    mp.spawn(loop_worker, args=(2, free_port(), str(tmp_path / "data"), str(tmp_path / "ddp")), nprocs=2, join=True)
    combined = dict(LOOP_CONFIG, training=dict(LOOP_CONFIG["training"], batch_size=2))
    train(combined, tmp_path / "data", tmp_path / "single", progress=False, report=lambda line: None)
    ddp = torch.load(tmp_path / "ddp" / "last.ckpt", weights_only=True)
    single = torch.load(tmp_path / "single" / "last.ckpt", weights_only=True)
    assert ddp["step"] == single["step"] == 2
    for key, value in single["model"].items():
        assert torch.allclose(ddp["model"][key], value, rtol=1e-4, atol=1e-6), key
    torch.manual_seed(3)
    start = build_model(LOOP_CONFIG, "bs_roformer").state_dict()
    moved = sum(not torch.equal(start[key], value) for key, value in single["model"].items())
    assert moved > 10  # the steps changed the weights: the comparison above is not between two initial models
