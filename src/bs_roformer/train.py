"""Training and fine-tuning, configured by the published YAML schema. Read it top to bottom: `train()` is the loop.

Keys read from `training:` (MSST names where they exist): `instruments`, `target_instrument`, `batch_size`,
`gradient_accumulation_steps`, `lr`, `grad_clip` (0 = off), `ema_momentum` (0 = no EMA), `use_amp`, plus
`num_steps` (optimizer steps in the run), `warmup_steps`, `weight_decay`, `seed`, `validate_every`, `num_workers`,
`checkpoint_every` (steps between writes of `last.ckpt`, default 500; 0 = only at the end).
From `audio:`: `chunk_size`, `sample_rate`, `min_mean_abs`. From `augmentations:`: `gain_db`, `channel_swap`,
`polarity` (see data/musdb.py). `model: use_torch_checkpoint: true` turns on gradient checkpointing; `training:
compile: true` runs the transformer stack through `torch.compile` (inductor; or name a backend: `compile: aot_eager`).

Many GPUs or nodes: `torchrun --nproc_per_node K -m bs_roformer train ...` (PyTorch DDP: NCCL on GPUs, gloo on the
CPU). Each optimizer step reads `batch_size x gradient_accumulation_steps` items on every rank, different ones; rank 0
logs, validates and writes checkpoints.

Checkpoints (`last.ckpt` every `checkpoint_every` steps and at the end, and `best.ckpt` by validation SDR) are
written atomically and hold the model, the EMA weights, optimizer, scheduler, gradient scaler, step and random states,
so `--resume` continues exactly where the run stopped or from the last checkpoint before a crash: a resumed run ends
with the weights an uninterrupted one ends with. `best.ckpt` and `last.ckpt` load as plain models too
(`checkpoint.load_state_dict` picks the EMA weights, under `state_dict`).
"""

import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .config import build_model, model_type_of, stem_names
from .data.musdb import Augmentations, StemChunks
from .metrics import global_sdr


def settings_of(config: dict) -> dict:
    training, audio = config.get("training") or {}, config.get("audio") or {}
    return dict(
        batch_size=int(training.get("batch_size", 2)),
        accumulation=int(training.get("gradient_accumulation_steps", 1)),
        lr=float(training.get("lr", 5e-4)),
        weight_decay=float(training.get("weight_decay", 0.0)),
        grad_clip=float(training.get("grad_clip", 0.0)),
        ema=float(training.get("ema_momentum", 0.0)),
        use_amp=bool(training.get("use_amp", False)),
        num_steps=int(training.get("num_steps", 1000)),
        warmup_steps=int(training.get("warmup_steps", 0)),
        seed=int(training.get("seed", 0)),
        validate_every=int(training.get("validate_every", 0)),
        num_workers=int(training.get("num_workers", 0)),
        checkpoint_every=int(training.get("checkpoint_every", 500)),
        compile=training.get("compile", False),
        chunk=int(audio.get("chunk_size", 131584)),
        sample_rate=int(audio.get("sample_rate", 44100)),
        min_mean_abs=float(audio.get("min_mean_abs", 0.0)),
    )


def learning_rate_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to zero at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def autocast_dtype(device: torch.device, use_amp: bool):
    """bf16 where the hardware has it (and on CPU), else fp16 on CUDA (with loss scaling); None for fp32."""
    if not use_amp:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def plot_curves(run_dir: Path):
    """`curves.png` in the run folder: training loss and validation SDR per stem against the step (needs
    matplotlib; without it, no plot)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    figure, (loss_axes, sdr_axes) = plt.subplots(1, 2, figsize=(10, 3.5))
    loss_axes.plot([r["step"] for r in records], [r["loss"] for r in records], linewidth=0.8)
    loss_axes.set(xlabel="step", ylabel="training loss", yscale="log")
    validated = [r for r in records if r.get("valid_sdr")]
    for stem in sorted({stem for r in validated for stem in r["valid_sdr"]}):
        points = [(r["step"], r["valid_sdr"][stem]) for r in validated if stem in r["valid_sdr"]]
        sdr_axes.plot(*zip(*points), marker="o", label=stem)
    sdr_axes.set(xlabel="step", ylabel="validation global SDR (dB)")
    if validated:
        sdr_axes.legend()
    for axes in (loss_axes, sdr_axes):
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(run_dir / "curves.png", dpi=90)
    plt.close(figure)


def save_atomically(state: dict, path: Path):
    partial = path.with_name(path.name + ".part")
    torch.save(state, partial)
    os.replace(partial, path)


def validate(model, config, valid_dir: Path, device) -> dict[str, float]:
    """Mean global SDR per stem over the validation tracks, separated as `bs-roformer separate` would."""
    from .data.layout import mixture_of, read_stems, track_folders
    from .separate import Separator

    separator = Separator(model, config, device=device)
    totals: dict[str, list[float]] = {}
    for folder in track_folders(valid_dir):
        references, rate = read_stems(folder)
        for stem, estimate in separator.separate(mixture_of(references), rate).items():
            if stem in references and references[stem].abs().sum() > 0:
                totals.setdefault(stem, []).append(global_sdr(references[stem], estimate).item())
    return {stem: float(np.mean(values)) for stem, values in totals.items()}


def rank_items(micro_batches: range, rank: int, world: int, batch: int) -> list[int]:
    """The dataset items rank `rank` reads for these micro-batches: micro-batch i of the whole run is items
    [i * world * batch, (i + 1) * world * batch), split between the ranks in order."""
    return [(micro * world + rank) * batch + j for micro in micro_batches for j in range(batch)]


def setup_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, device) under torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return torch.distributed.get_rank(), world, device


def train(config: dict, data_dir: str | Path, run_dir: str | Path, *, resume: bool = False,
          valid_dir: str | Path | None = None, init_checkpoint: str | Path | None = None, device="cpu",
          stop_after: int | None = None, progress: bool = True) -> dict:
    """Train the model a config describes on the stems under `data_dir`; returns the final log record.
    `stop_after` ends the run after that many optimizer steps (as an interruption would)."""
    from .checkpoint import load_state_dict

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = settings_of(config)
    rank, world, device = setup_distributed(torch.device(device))
    main_process = rank == 0  # logs, validates and writes checkpoints
    torch.manual_seed(settings["seed"])
    model = build_model(config, model_type_of(config)).to(device).train()
    if init_checkpoint:  # fine-tuning a published model
        model.load_state_dict(load_state_dict(init_checkpoint), strict=True)
    # validation runs on a second, never compiled model that receives the weights to validate; built here, before
    # the reseed below, so that building it draws no random numbers in the middle of a run (a resumed run would drift)
    validates = main_process and valid_dir and settings["validate_every"]
    validation_model = build_model(config, model_type_of(config)).to(device) if validates else None
    torch.manual_seed(settings["seed"] + rank)  # the same init everywhere, other dropout masks on each rank
    network = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    if settings["compile"]:  # true: inductor; a string names another torch.compile backend
        backend = settings["compile"] if isinstance(settings["compile"], str) else "inductor"
        model.compile_transformer_stack(backend=backend)
    instruments = list((config.get("training") or {}).get("instruments") or stem_names(config))
    targets = [instruments.index(name) for name in stem_names(config)]

    # the data: one long epoch of reproducible items, so a resumed run reads the items it has not read yet
    items_per_step = settings["batch_size"] * settings["accumulation"] * world
    augmentations = Augmentations(**(config.get("augmentations") or {})) if config.get("augmentations") else None
    dataset = StemChunks(data_dir, instruments, settings["chunk"], items_per_epoch=settings["num_steps"] * items_per_step,
                         min_mean_abs=settings["min_mean_abs"], augmentations=augmentations, seed=settings["seed"],
                         sample_rate=settings["sample_rate"], channels=2 if model.stereo else 1)

    # fused: one kernel for all parameters instead of a dozen small ops per tensor (17 -> 3 ms a step for the
    # demo model's 457 tensors on the CPU); the devices with a fused AdamW in every torch we support (>= 2.4)
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"],
                                  fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, settings["warmup_steps"], settings["num_steps"]))
    dtype = autocast_dtype(device, settings["use_amp"])
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ema = [p.detach().clone() for p in model.parameters()] if settings["ema"] > 0 else None
    step, best = 0, -math.inf

    last = run_dir / "last.ckpt"
    if resume:
        if not last.is_file():
            raise FileNotFoundError(f"--resume: no {last} to resume from")
        state = torch.load(last, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # this device's choice, not the one saved with the checkpoint
            group["fused"] = fused
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            for average, saved in zip(ema, state["ema"]):
                average.copy_(saved)
        step, best = state["step"], state["best"]
        torch.set_rng_state(state["torch_rng"])  # dropout; the data draws from its own per-item generators

    def checkpoint_state() -> dict:
        weights = model.state_dict()
        if ema is not None:  # `state_dict` holds the weights to use: the EMA ones when there are
            ema_weights = dict(zip([name for name, _ in model.named_parameters()], ema))
            weights = {key: ema_weights.get(key, value) for key, value in weights.items()}
        return {"state_dict": weights, "model": model.state_dict(), "ema": ema, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step, "best": best,
                "config": config, "torch_rng": torch.get_rng_state()}

    micro_batches = range(step * settings["accumulation"], settings["num_steps"] * settings["accumulation"])
    sampler = rank_items(micro_batches, rank, world, settings["batch_size"])
    # its own generator: creating the loader must not draw from the global RNG that dropout (and resuming) uses
    loader = iter(torch.utils.data.DataLoader(dataset, batch_size=settings["batch_size"], sampler=sampler,
                                              num_workers=settings["num_workers"], generator=torch.Generator()))
    log = open(run_dir / "metrics.jsonl", "a") if main_process else None
    bar = tqdm(total=settings["num_steps"], initial=step, desc="training", disable=not (progress and main_process))
    end = settings["num_steps"] if stop_after is None else min(settings["num_steps"], step + stop_after)
    record = {"step": step}  # what a resumed run that has already finished reports
    while step < end:
        started = time.perf_counter()
        total_loss = 0.0
        for micro in range(settings["accumulation"]):
            mixture, stems = (tensor.to(device) for tensor in next(loader))
            target = stems[:, targets] if len(targets) > 1 else stems[:, targets[0]]
            last_micro = micro == settings["accumulation"] - 1  # DDP averages gradients over ranks only then
            with (nullcontext() if world == 1 or last_micro else network.no_sync()):
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    loss = network(mixture, target=target) / settings["accumulation"]
                scaler.scale(loss).backward()
            total_loss += loss.item()
        scaler.unscale_(optimizer)
        if settings["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings["grad_clip"])
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if ema is not None:
            with torch.no_grad():
                for average, parameter in zip(ema, model.parameters()):
                    average.lerp_(parameter, 1 - settings["ema"])
        step += 1
        record = {"step": step, "loss": total_loss, "lr": scheduler.get_last_lr()[0],
                  "seconds": time.perf_counter() - started}
        if not main_process:
            continue
        if validates and (step % settings["validate_every"] == 0 or step == end):
            record["valid_sdr"] = validate(_load_validation_weights(validation_model, model, ema), config,
                                           Path(valid_dir), device)
            mean_sdr = float(np.mean(list(record["valid_sdr"].values()))) if record["valid_sdr"] else -math.inf
            if mean_sdr > best:
                best = mean_sdr
                save_atomically(checkpoint_state(), run_dir / "best.ckpt")
        if settings["checkpoint_every"] and step % settings["checkpoint_every"] == 0 and step < end:
            save_atomically(checkpoint_state(), last)  # a crash loses at most checkpoint_every steps
        log.write(json.dumps(record) + "\n")
        log.flush()
        bar.set_postfix(loss=f"{total_loss:.4f}")
        bar.update(1)
    bar.close()
    if main_process:
        log.close()
        save_atomically(checkpoint_state(), last)
        plot_curves(run_dir)
    if world > 1:
        torch.distributed.barrier()  # no rank leaves before the checkpoint is written
    return record


def _load_validation_weights(validation_model, model, ema):
    """Put the EMA weights (or the current ones) into the validation model. A separate model, not a deep copy: a
    compiled transformer stack is bound to the model it was compiled for."""
    validation_model.load_state_dict(model.state_dict())
    if ema is not None:
        with torch.no_grad():
            for target, average in zip(validation_model.parameters(), ema):
                target.copy_(average)
    return validation_model.eval()
