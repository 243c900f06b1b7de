"""Training and fine-tuning from an MSST YAML config, with MSST's meaning of its keys. Read it top to bottom:
`train()` is the loop.

The settings are `train_settings.Settings` (field names = the published keys; unknown keys warn, unsupported ones
stop). An epoch is `training.num_steps` batches of `batch_size` (per process), an optimizer step every
`gradient_accumulation_steps` batches and at the epoch's end; the run is `num_epochs` epochs. At each epoch's end
(and every `validate_every` optimizer steps, if set) the model is validated on `--valid` with `metrics`, per stem;
the mean over stems of `metric_for_scheduler` picks `best.ckpt` and drives ReduceLROnPlateau (`patience`,
`reduce_factor`; stepped once per epoch, as MSST). Other schedulers: `linear_scheduler` (MSST: `num_warmup_steps`
then linear decay over num_epochs x num_steps) and `cosine` (ours: `warmup_steps` then cosine decay to zero at the
last optimizer step). Optimizers: adam, adamw, radam, rmsprop, sgd (torch) and prodigy (the `prodigyopt` package),
with extra arguments from the top-level `optimizer:` section. The loss is the model's own, or with
`use_standard_loss` MSST's `loss` terms (`losses.py`).

Many GPUs or nodes: `torchrun --nproc_per_node K -m bs_roformer train ...` (PyTorch DDP: NCCL on GPUs, gloo on the
CPU). Each process reads its own `batch_size` items per batch; rank 0 logs, validates and writes checkpoints.

Checkpoints (`last.ckpt` every `checkpoint_every` optimizer steps, on SIGINT/SIGTERM and at the end; `best.ckpt` on
a better validation) are written atomically and hold the model, EMA weights, optimizer, scheduler, gradient scaler,
step and random state, so `--resume` continues exactly: a resumed run ends with the weights an uninterrupted one
ends with. Their `state_dict` holds the weights to use (EMA ones when there are; only the adapters with LoRA), so
they load as plain models (or adapters) too.
"""

import functools
import json
import math
import os
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .config import _explain_mismatch, build_model, model_type_of, stem_names
from .data.musdb import StemChunks
from .device import autocast, resolve_training_precision
from .train_settings import Settings, read_settings

RUN_FILES = ("last.ckpt", "best.ckpt", "metrics.jsonl", "curves.png")


def learning_rate_factor(step: int, warmup: int, total: int) -> float:
    """`cosine`: linear warm-up, then cosine decay to zero at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def linear_factor(step: int, warmup: int, total: int) -> float:
    """`linear_scheduler`: linear warm-up from 0, then linear decay to 0 at `total` (as transformers' schedule)."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def build_optimizer(settings: Settings, parameters: list, device: torch.device) -> torch.optim.Optimizer:
    name, lr, extra = settings.training.optimizer, settings.training.lr, dict(settings.optimizer)
    if name == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise ValueError("training.optimizer prodigy needs the prodigyopt package: "
                             "pip install 'bs-roformer-fast[prodigy]'") from None
        return Prodigy(parameters, lr=lr, **extra)
    classes = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam,
               "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}
    if name in ("adam", "adamw") and device.type in ("cpu", "cuda"):
        # one kernel for all parameters instead of a dozen small ops per tensor; fused Adam(W) exists on these
        # devices in every torch we support (>= 2.4)
        extra.setdefault("fused", True)
    try:
        return classes[name](parameters, lr=lr, **extra)
    except TypeError as error:
        raise ValueError(f"optimizer: section: {error}") from None


def build_scheduler(settings: Settings, optimizer):
    training = settings.training
    if training.scheduler == "ReduceLROnPlateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "max", patience=training.patience,
                                                          factor=training.reduce_factor)
    # partial functions: LambdaLR saves no state for them, so a resumed run with more epochs follows the new length
    if training.scheduler == "linear_scheduler":  # compat: MSST counts num_epochs x num_steps as the total
        total = training.num_epochs * training.num_steps
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(linear_factor, warmup=training.num_warmup_steps, total=total))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(learning_rate_factor, warmup=training.warmup_steps, total=training.total_steps))


def plot_curves(run_dir: Path, metric: str):
    """`curves.png` in the run folder: training loss, and the validation `metric` per stem, against the step (needs
    matplotlib; without it, no plot)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    figure, (loss_axes, valid_axes) = plt.subplots(1, 2, figsize=(10, 3.5))
    loss_axes.plot([r["step"] for r in records], [r["loss"] for r in records], linewidth=0.8)
    loss_axes.set(xlabel="step", ylabel="training loss", yscale="log")
    validated = [r for r in records if r.get("valid", {}).get(metric)]
    for stem in sorted({stem for r in validated for stem in r["valid"][metric]}):
        points = [(r["step"], r["valid"][metric][stem]) for r in validated if stem in r["valid"][metric]]
        valid_axes.plot(*zip(*points), marker="o", label=stem)
    valid_axes.set(xlabel="step", ylabel=f"validation {metric}")
    if validated:
        valid_axes.legend()
    for axes in (loss_axes, valid_axes):
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(run_dir / "curves.png", dpi=90)
    plt.close(figure)


def save_atomically(state: dict, path: Path):
    partial = path.with_name(path.name + ".part")
    torch.save(state, partial)
    os.replace(partial, path)


def score(metric: str, reference: torch.Tensor, estimate: torch.Tensor, sample_rate: int) -> float:
    from .metrics import bleedless_fullness, global_sdr, l1_freq, si_sdr

    if metric == "sdr":
        return global_sdr(reference, estimate).item()
    if metric == "si_sdr":
        return si_sdr(reference, estimate).item()
    if metric == "l1_freq":
        return l1_freq(reference, estimate).item()
    bleedless, fullness = bleedless_fullness(reference, estimate, sample_rate)
    return (bleedless if metric == "bleedless" else fullness).item()


def validate(model, config, valid_dirs: Path | list[Path], device, metrics=("sdr",), other_fix=False) -> dict:
    """{metric: {stem: mean over the validation tracks}}, the tracks (of one folder or several) separated as
    `bs-roformer separate` would. With `other_fix`, `other` is scored against mixture - vocals (MSST, for test sets
    whose `other` is the rest)."""
    from .data.layout import mixture_of, read_stems, track_folders
    from .separate import Separator

    separator = Separator(model, config, device=device)
    totals: dict[str, dict[str, list[float]]] = {metric: {} for metric in metrics}
    valid_dirs = valid_dirs if isinstance(valid_dirs, (list, tuple)) else [valid_dirs]
    for folder in [track for valid_dir in valid_dirs for track in track_folders(Path(valid_dir))]:
        references, rate = read_stems(folder)
        mixture = mixture_of(references)
        if other_fix and "vocals" in references:
            references["other"] = mixture - references["vocals"]
        for stem, estimate in separator.separate(mixture, rate).items():
            if stem in references and references[stem].abs().sum() > 0:
                for metric in metrics:
                    totals[metric].setdefault(stem, []).append(score(metric, references[stem], estimate, rate))
    return {metric: {stem: float(np.mean(v)) for stem, v in stems.items()} for metric, stems in totals.items()}


def rank_items(micro_batches: range, rank: int, world: int, batch: int) -> list[int]:
    """The dataset items rank `rank` reads for these micro-batches: micro-batch i of the epoch is items
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


class StopRequest:
    """SIGINT/SIGTERM ask the loop to stop after the current optimizer step (it then writes last.ckpt); a second
    signal stops at once. Installed only in the main thread (Python's rule for signal handlers)."""

    def __init__(self):
        self.requested, self._previous = False, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def ignore_interrupts(worker_id: int):
    """DataLoader workers share the terminal's Ctrl-C: the main process alone decides when to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class RunFinished(ValueError):
    """--resume on a run that has already reached its last step."""


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> list[Path]:
    """Refuse to mix a new run into an old one: an existing run needs --resume (continue) or --overwrite (replace).
    Returns the files of the run to replace (deleted once the new run has started)."""
    if resume:
        if not (run_dir / "last.ckpt").is_file():
            raise FileNotFoundError(f"--resume: no {run_dir / 'last.ckpt'} to resume from")
        return []
    existing = [run_dir / name for name in RUN_FILES if (run_dir / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{run_dir} holds a run ({', '.join(path.name for path in existing)}): continue it "
                              "with --resume, replace it with --overwrite, or choose another --out")
    return existing


def truncate_log(path: Path, step: int):
    """Keep the records up to `step`: after a resume the steps since the checkpoint are logged again."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    partial = path.with_name(path.name + ".part")
    partial.write_text("".join(line + "\n" for line in kept))
    os.replace(partial, path)


def warm_start(model, state: dict, config: dict, model_type: str, tolerant: bool) -> list[str]:
    """Load `state` into `model` for fine-tuning: strictly (a mismatch is a ValueError that says which config values
    disagree), or with `tolerant` as MSST's train-mode loader: tensors of the same name and rank but another shape
    are cropped or zero-padded into place, others of another rank or missing are left as initialised. Returns one
    line per tensor not loaded as it is."""
    if not tolerant:
        problem = _explain_mismatch(config, model, model_type, state)
        if problem:
            raise ValueError(f"--init: the checkpoint does not fit the config: {problem} "
                             "(or use --init-tolerant to crop/zero-pad what differs)")
        model.load_state_dict(state, strict=True)
        return []
    report, own = [], model.state_dict()
    for key, target in own.items():
        if key not in state:
            report.append(f"{key}: not in the checkpoint, left as initialised")
            continue
        source = state[key].to(target.dtype)
        if source.shape == target.shape:
            target.copy_(source)
        elif source.ndim == target.ndim:
            region = tuple(slice(0, min(a, b)) for a, b in zip(source.shape, target.shape))
            target.zero_()
            target[region].copy_(source[region])
            report.append(f"{key}: {tuple(source.shape)} -> {tuple(target.shape)}, cropped/zero-padded")
        else:
            report.append(f"{key}: rank {source.ndim} in the checkpoint, {target.ndim} here, left as initialised")
    report += [f"{key}: in the checkpoint only, not used" for key in state if key not in own]
    return report


def freeze(model, prefixes: list[str]) -> int:
    """Stop the gradients of the parameters whose names start with one of `prefixes`; returns how many."""
    frozen = 0
    for name, parameter in model.named_parameters():
        if any(name.startswith(prefix) for prefix in prefixes):
            parameter.requires_grad_(False)
            frozen += 1
    unmatched = [p for p in prefixes if not any(n.startswith(p) for n, _ in model.named_parameters())]
    if unmatched:
        raise ValueError(f"--freeze: no parameter name starts with {unmatched}")
    return frozen


def train(config: dict, data_dir: str | Path | list, run_dir: str | Path, *, resume: bool = False,
          overwrite: bool = False, valid_dir: str | Path | list | None = None,
          init_checkpoint: str | Path | None = None, init_tolerant=False, freeze_prefixes: list[str] | None = None,
          lora: bool = False, lora_checkpoint: str | Path | None = None, model_type: str | None = None,
          device="cpu", precision: str = "auto", stop_after: int | None = None, progress: bool = True,
          report=print) -> dict:
    """Train the model a config describes on the data under `data_dir` (and validate on `valid_dir`: a folder, or
    several as a list, as MSST's `--data_path` and `--valid_path`); returns the final log record (with
    `interrupted: True` when a signal stopped it). `stop_after` ends the run after that many optimizer steps (as an
    interruption would). `report` receives the one-line notes (skipped tracks, warm-start treatment)."""
    from .checkpoint import load_state_dict

    run_dir = Path(run_dir)
    settings = read_settings(config)
    training = settings.training
    replaced = check_run_dir(run_dir, resume, overwrite)
    rank, world, device = setup_distributed(torch.device(device))
    main_process = rank == 0  # logs, validates and writes checkpoints
    if lora and not config.get("lora"):
        raise ValueError("--lora needs the config's lora: section, as in MSST: its rank r, lora_alpha and "
                         "lora_dropout (for example lora: {r: 8, lora_alpha: 16, lora_dropout: 0.05})")
    if lora_checkpoint and not lora:
        raise ValueError("--lora-checkpoint starts LoRA training from an adapter: add --lora")
    if model_type and training.model_type and model_type != training.model_type:
        raise ValueError(f"--model-type {model_type} but the config's training.model_type is {training.model_type}")
    chosen = model_type or training.model_type
    model_type = model_type_of(config, override=chosen)
    if chosen is None:
        report(f"model type {model_type}, from the config's model keys (--model-type to choose another)")
    torch.manual_seed(training.seed)
    model = build_model(config, model_type).to(device).train()
    if init_checkpoint:  # fine-tuning a published model
        for line in warm_start(model, load_state_dict(init_checkpoint), config, model_type, init_tolerant):
            report(f"--init: {line}")
    if lora:
        from .lora import add_lora, load_adapter

        add_lora(model, settings.lora)
        if lora_checkpoint:
            report(f"--lora-checkpoint: {load_adapter(model, load_state_dict(lora_checkpoint))} adapter tensors loaded")
    if freeze_prefixes:
        report(f"--freeze: {freeze(model, freeze_prefixes)} parameter tensors frozen")
    # validation runs on a second, never compiled model that receives the weights to validate; built here, before
    # the reseed below, so that building it draws no random numbers in the middle of a run (a resumed run would drift)
    validates = main_process and valid_dir is not None
    validation_model = build_model(config, model_type).to(device) if validates else None
    torch.manual_seed(training.seed + rank)  # the same init everywhere, other dropout masks on each rank
    # class-balanced data (type 7) leaves some heads out of some steps on some ranks
    network = (torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=training.dataset_type == 7)
               if world > 1 else model)
    if training.compile:  # true: inductor; a string names another torch.compile backend
        model.compile_transformer_stack(backend=training.compile if isinstance(training.compile, str) else "inductor")
    instruments = list(training.instruments or stem_names(config))
    targets = [instruments.index(name) for name in stem_names(config)]

    dataset = StemChunks(data_dir, instruments, settings.chunk_size, dataset_type=training.dataset_type,
                         items_per_epoch=training.num_steps * training.batch_size * world,
                         min_mean_abs=settings.min_mean_abs, augmentations=settings.augmentations, seed=training.seed,
                         sample_rate=settings.sample_rate, channels=2 if model.stereo else 1,
                         max_class_presence_ratio=training.max_class_presence_ratio)
    if dataset.problems and main_process:
        report(f"skipped {len(dataset.problems)} of the data: " + "; ".join(dataset.problems[:5])
               + (" ..." if len(dataset.problems) > 5 else ""))
    if training.scheduler == "ReduceLROnPlateau" and valid_dir is None and main_process:
        report("ReduceLROnPlateau steps on the validation metric: without --valid the learning rate stays constant")

    standard_loss = build_standard_loss(settings, config) if training.use_standard_loss else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(settings, trainable, device)
    scheduler = build_scheduler(settings, optimizer)
    per_step_scheduler = not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    precision, reason = resolve_training_precision(precision, device, training.use_amp)
    report(f"training in {precision} ({reason})")
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    ema = [p.detach().clone() for p in model.parameters()] if training.ema_momentum > 0 else None
    step, best = 0, -math.inf

    last = run_dir / "last.ckpt"
    if resume:
        state = torch.load(last, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if "fused" in optimizer.defaults:  # this device's choice, not the one saved with the checkpoint
            for group in optimizer.param_groups:
                group["fused"] = optimizer.defaults["fused"]
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            for average, saved in zip(ema, state["ema"]):
                average.copy_(saved)
        step, best = state["step"], state["best"]
        torch.set_rng_state(state["torch_rng"])  # dropout; the data draws from its own per-item generators
        if step >= training.total_steps:
            raise RunFinished(f"already at step {step} of {training.total_steps} (num_epochs {training.num_epochs} "
                              f"x {training.steps_per_epoch} optimizer steps); raise training.num_epochs or "
                              "num_steps to train longer")
        if main_process:
            truncate_log(run_dir / "metrics.jsonl", step)
    if main_process:  # only now: a run that fails to start leaves no folder, and the run it replaces intact
        for path in replaced:
            path.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)

    def checkpoint_state() -> dict:
        weights = weights_to_use(model, ema)
        if lora:
            from .lora import adapter_state

            weights = adapter_state(weights)
        return {"state_dict": weights, "model": model.state_dict(), "ema": ema, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step, "best": best,
                "config": config, "torch_rng": torch.get_rng_state()}

    # an epoch's optimizer steps: each reads `accumulation` batches, the last one what is left of num_steps
    accumulation, per_epoch = training.gradient_accumulation_steps, training.steps_per_epoch
    log = open(run_dir / "metrics.jsonl", "a") if main_process else None
    bar = tqdm(total=training.total_steps, initial=step, desc="training", disable=not (progress and main_process))
    end = training.total_steps if stop_after is None else min(training.total_steps, step + stop_after)
    record = {"step": step}
    loader, loader_epoch = None, None
    with StopRequest() as stop:
        while step < end:
            epoch, in_epoch = divmod(step, per_epoch)
            if loader_epoch != epoch:  # a fresh loader per epoch, from the batch this run starts at
                dataset.set_epoch(epoch)
                batches = range(in_epoch * accumulation, training.num_steps)
                # its own generator: creating the loader must not draw from the RNG that dropout (and resuming) uses
                loader = iter(torch.utils.data.DataLoader(
                    dataset, batch_size=training.batch_size, sampler=rank_items(batches, rank, world,
                                                                                training.batch_size),
                    num_workers=training.num_workers, generator=torch.Generator(), worker_init_fn=ignore_interrupts))
                loader_epoch = epoch
            started = time.perf_counter()
            micro_batches = min(accumulation, training.num_steps - in_epoch * accumulation)
            total_loss = 0.0
            for micro in range(micro_batches):
                mixture, stems, active = (tensor.to(device) for tensor in next(loader))
                last_micro = micro == micro_batches - 1  # DDP averages gradients over ranks only then
                with (nullcontext() if world == 1 or last_micro else network.no_sync()):
                    with autocast(device, precision):
                        # compat: divided by gradient_accumulation_steps even in a shorter last step (MSST)
                        loss = batch_loss(network, mixture, stems[:, targets], active, targets,
                                          standard_loss) / accumulation
                    scaler.scale(loss).backward()
                total_loss += loss.item()
            scaler.unscale_(optimizer)
            if training.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, training.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if per_step_scheduler:
                scheduler.step()
            if ema is not None:
                with torch.no_grad():
                    for average, parameter in zip(ema, model.parameters()):
                        average.lerp_(parameter, 1 - training.ema_momentum)
            step += 1
            epoch_ends = step % per_epoch == 0
            record = {"step": step, "epoch": epoch, "loss": total_loss, "lr": optimizer.param_groups[0]["lr"],
                      "seconds": time.perf_counter() - started}
            if validates and (epoch_ends or (training.validate_every and step % training.validate_every == 0)):
                record["valid"] = validate(_load_validation_weights(validation_model, model, ema), config,
                                           valid_dir, device, training.metrics, training.other_fix)
                scores = list(record["valid"][training.metric_for_scheduler].values())
                mean = float(np.mean(scores)) if scores else -math.inf
                if mean > best:
                    best = mean
                    save_atomically(checkpoint_state(), run_dir / "best.ckpt")
                if epoch_ends and not per_step_scheduler:
                    scheduler.step(mean)
            if world > 1:  # every rank stops at the same step, or the others would wait in the next all-reduce
                flag = torch.tensor([float(stop.requested)], device=device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                stop.requested = bool(flag.item())
            if main_process:
                if (step % training.checkpoint_interval == 0 or stop.requested) and step < end:
                    save_atomically(checkpoint_state(), last)  # a crash loses at most checkpoint_every steps
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{total_loss:.4f}")
                bar.update(1)
            if stop.requested:
                record["interrupted"] = True
                break
    bar.close()
    if main_process:
        log.close()
        save_atomically(checkpoint_state(), last)
        plot_curves(run_dir, training.metric_for_scheduler)
    if world > 1:
        torch.distributed.barrier()  # no rank leaves before the checkpoint is written
    return record


def build_standard_loss(settings: Settings, config: dict):
    """MSST's `--loss` terms with their coefficients (`use_standard_loss`)."""
    from .losses import StandardLoss, spectrogram_settings

    training = settings.training
    return StandardLoss({name: getattr(training, f"{name}_coef") for name in training.loss}, q=training.q,
                        coarse=training.coarse_loss_clip, stft=spectrogram_settings(config.get("model") or {}),
                        multistft=settings.loss_multistft)


def batch_loss(network, mixture, target, active, targets, standard_loss=None):
    """The loss of one batch; `target` is (batch, len(targets), channels, samples).

    Without `standard_loss`, the model's own loss; with some stems inactive in the whole batch (dataset type 7),
    only the active heads run and learn (MSST's `active_stem_ids`, here the stems active in any item of the batch).
    With it, the full output against every target stem (compat: MSST passes no `active_stem_ids` then)."""
    if standard_loss is not None:
        estimate = network(mixture)
        estimate = estimate.reshape(target.shape[:-1] + estimate.shape[-1:])  # a single stem's output has no stem axis
        return standard_loss(estimate, target[..., : estimate.shape[-1]])
    if len(targets) == 1:
        return network(mixture, target=target[:, 0])
    if bool(active.all()):
        return network(mixture, target=target)
    stem_ids = [i for i, target_index in enumerate(targets) if bool(active[:, target_index].any())]
    return network(mixture, target=target, active_stem_ids=stem_ids)


def weights_to_use(model, ema) -> dict:
    """The model's state_dict with the EMA weights in place of the live ones, when there are."""
    weights = model.state_dict()
    if ema is None:
        return weights
    averages = dict(zip([name for name, _ in model.named_parameters()], ema))
    return {key: averages.get(key, value) for key, value in weights.items()}


def _load_validation_weights(validation_model, model, ema):
    """Put the weights to use into the validation model. A separate model, not a deep copy: a compiled transformer
    stack is bound to the model it was compiled for. With LoRA the adapters are merged in."""
    from .lora import merged_state

    validation_model.load_state_dict(merged_state(weights_to_use(model, ema)))
    return validation_model.eval()
