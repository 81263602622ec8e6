"""The loop the supervised verbs (train, distill) share. Hugging Face Accelerate runs it on one CPU,
a GPU with bf16/fp16 autocast, or data-parallel under ``torchrun`` / ``accelerate launch`` (gloo on
CPUs, NCCL on GPUs); the loop itself does not change. The model, optimizer and schedule are saved
every ``save_every`` steps and each epoch to ``OUT.resume/`` (safetensors and JSON, never pickle),
so an interrupted run continues with ``resume=True`` exactly where it stopped."""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgebert.atomic import staging, write_json
from edgebert.errors import InputError, ModelError

log = logging.getLogger("edgebert")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LossFn = Callable[[Any, dict[str, Any]], Any]  # (the model as prepared, a batch on its device) -> loss


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """How a supervised run trains: AdamW with linear warm-up and decay, batches of similar lengths,
    evaluation on the dev file each epoch (``patience``: stop after that many epochs without a better
    dev accuracy); ``data``/``eval_data`` are labeled files. ``precision``: ``auto`` is bf16 (fp16
    where bf16 is missing) on a GPU and fp32 on a CPU."""

    data: str
    eval_data: str
    epochs: int = 1
    max_steps: int | None = None
    max_length: int = 64
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    patience: int | None = None
    precision: str = "auto"
    save_every: int = 500
    resume: bool = False
    seed: int = 0
    force: bool = False


def resume_dir(out: str | Path) -> Path:
    """Where a run writes its resumable state while it trains."""
    return Path(f"{out}.resume")


def check_resume(out: str | Path, config: Schedule) -> None:
    """Refuse to lose an interrupted run's state, or to resume one that is not there."""
    state = resume_dir(out)
    if config.resume and not (state / "state.json").is_file():
        raise ModelError(f"--resume: no interrupted run to continue at '{state}'")
    if state.exists() and not config.resume:
        if not config.force:
            raise ModelError(
                f"an interrupted run left '{state}': pass --resume to continue it or --force to start over"
            )
        shutil.rmtree(state)


def accelerator(precision: str) -> Any:
    """An ``accelerate.Accelerator`` for ``precision`` on the GPU if there is one, else the CPU."""
    import torch
    from accelerate import Accelerator

    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    cuda = torch.cuda.is_available()
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if precision != "fp32" and not cuda:
        raise InputError(f"--precision {precision} needs a CUDA GPU and none is visible: use fp32 on a CPU")
    return Accelerator(cpu=not cuda, mixed_precision="no" if precision == "fp32" else precision)


def optimizer_step(accelerator: Any, model: Any, optimizer: Any, scheduler: Any, loss: Any) -> None:
    """Backward (gradients averaged across processes), clip at norm 1, step, and clear."""
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def fit(
    model: Any,
    tokenizer: Any,
    train_set: list[dict[str, Any]],
    dev_set: list[dict[str, Any]],
    config: Schedule,
    loss_of: LossFn,
    *,
    out: str | Path,
) -> dict[str, Any]:
    """Train ``model`` in place; leave the best epoch's weights (by dev accuracy) in it and return
    its figures."""
    import torch
    import transformers
    from tqdm.auto import tqdm

    acc = accelerator(config.precision)
    world, rank = acc.num_processes, acc.process_index
    per_epoch = -(-len(train_set) // config.batch_size) // world
    if per_epoch < 1:
        raise InputError(f"{len(train_set)} examples make fewer batches than the {world} processes")
    total = min(config.max_steps or per_epoch * config.epochs, per_epoch * config.epochs)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    scheduler = transformers.get_linear_schedule_with_warmup(
        optimizer, int(total * config.warmup_ratio), total
    )
    prepared, optimizer = acc.prepare(model, optimizer)
    run: dict[str, Any] = {"step": 0, "seen": 0, "seconds": 0.0, "history": [], "best": None}
    best_state: dict[str, Any] = {}
    if config.resume:
        run, best_state = _load_state(out, config, model, optimizer, scheduler)
    run.setdefault("step_seconds", 0.0)  # in the training steps alone: evaluation and checkpoints left out
    started = time.perf_counter() - run["seconds"]
    first_epoch = run["step"] // per_epoch + 1
    for epoch in range(first_epoch, config.epochs + 1):
        prepared.train()
        batches = bucketed(train_set, config.batch_size, random.Random(config.seed + epoch))
        mine = batches[rank::world][:per_epoch][run["step"] - (epoch - 1) * per_epoch :]
        mine = mine[: total - run["step"]]
        bar = tqdm(mine, desc=f"epoch {epoch}", unit="batch", leave=False, disable=True if rank else None)
        for batch in bar:
            stepped = time.perf_counter()
            torch.manual_seed((config.seed * 1_000_003 + run["step"]) * world + rank)  # dropout, resumable
            inputs = {k: v.to(acc.device) for k, v in collate(tokenizer, batch).items()}
            loss = loss_of(prepared, inputs)
            optimizer_step(acc, prepared, optimizer, scheduler, loss)
            run["step"] += 1
            run["seen"] += len(batch) * world
            run["step_seconds"] += time.perf_counter() - stepped
            speed = run["seen"] / run["step_seconds"]
            bar.set_postfix(loss=f"{loss.item():.4f}", samples_s=f"{speed:.0f}")
            if bar.disable and rank == 0 and run["step"] % max(1, total // 10) == 0:
                log.info("step %d/%d: loss %.4f, %.0f samples/s", run["step"], total, loss.item(), speed)
            if run["step"] % config.save_every == 0 and run["step"] < total and run["step"] % per_epoch:
                _save_state(acc, out, config, run, started, model, optimizer, scheduler, best_state)
        accuracy = evaluate(model, tokenizer, dev_set, device=acc.device)
        run["history"].append({"epoch": epoch, "steps": run["step"], "dev_accuracy": accuracy})
        if rank == 0:
            log.info("epoch %d: dev accuracy %.4f after %d steps", epoch, accuracy, run["step"])
        if run["best"] is None or accuracy > run["best"]["dev_accuracy"]:
            run["best"] = {"epoch": epoch, "dev_accuracy": accuracy}
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        stop = run["step"] >= total or (
            config.patience is not None and epoch - run["best"]["epoch"] >= config.patience
        )
        _save_state(acc, out, config, run, started, model, optimizer, scheduler, best_state)
        if stop:
            break
    seconds = time.perf_counter() - started
    model.load_state_dict(best_state)
    return {
        "dev_accuracy": run["best"]["dev_accuracy"],
        "best_epoch": run["best"]["epoch"],
        "steps": run["step"],
        "stopped_early": run["step"] < total,
        "train_seconds": round(seconds, 1),
        "samples_per_s": round(run["seen"] / max(run["step_seconds"], 1e-9), 1),  # steps alone
        "processes": world,
        "replicas_in_sync": _replicas_in_sync(acc, model),
        "precision": acc.mixed_precision if acc.mixed_precision != "no" else "fp32",
        "history": run["history"],
    }


def is_main_process() -> bool:
    from accelerate import PartialState

    return bool(PartialState().is_main_process)


def evaluate(model: Any, tokenizer: Any, dataset: list[dict[str, Any]], *, device: Any = "cpu") -> float:
    """Accuracy of ``model`` on encoded, labeled ``dataset`` (batches of similar lengths)."""
    import torch

    model.eval()
    correct = 0
    ordered = sorted(dataset, key=lambda row: len(row["input_ids"]))
    with torch.no_grad():
        for start in range(0, len(ordered), 64):
            inputs = {k: v.to(device) for k, v in collate(tokenizer, ordered[start : start + 64]).items()}
            labels = inputs.pop("labels")
            correct += int((model(**inputs).logits.argmax(-1) == labels).sum())
    return correct / max(len(dataset), 1)


def collate(tokenizer: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(tokenizer.pad(rows, return_tensors="pt"))


def bucketed(
    dataset: list[dict[str, Any]], batch_size: int, rng: random.Random
) -> list[list[dict[str, Any]]]:
    """Shuffle, sort each window of 50 batches by length, cut into batches, shuffle the batches:
    little padding, still random."""
    order = list(range(len(dataset)))
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(dataset[i]["input_ids"]))
        batches += [[dataset[i] for i in chunk[j : j + batch_size]] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[Any] = []
    no_decay: list[Any] = []
    for name, param in model.named_parameters():
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _replicas_in_sync(acc: Any, model: Any) -> bool:
    """Whether every process ends with the same weights (always so for one process)."""
    import torch

    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
    every = acc.gather(checksum.reshape(1).to(acc.device))
    return bool(torch.all(every == every[0]))


def _identity(config: Schedule) -> dict[str, Any]:
    """What must not change between a run and its resumption; a file or checkpoint named by its
    absolute path, however it was written on the command line."""
    free = ("resume", "force", "save_every", "precision")

    def named(value: Any) -> Any:
        return str(Path(value).resolve()) if isinstance(value, str) and Path(value).exists() else value

    return {k: named(v) for k, v in asdict(config).items() if k not in free}


def _save_state(
    acc: Any,
    out: str | Path,
    config: Schedule,
    run: dict[str, Any],
    started: float,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    best_state: dict[str, Any],
) -> None:
    """Write the resumable state atomically (the main process; the others wait for it)."""
    from safetensors.torch import save_file, save_model

    if acc.is_main_process:
        optimizer_state = optimizer.state_dict()
        tensors = {f"{i}.{k}": v for i, state in optimizer_state["state"].items() for k, v in state.items()}
        with staging(resume_dir(out), replace=True, marker="state.json") as stage:
            save_model(model, str(stage / "model.safetensors"))
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(stage / "optimizer.safetensors"))
            if best_state:
                save_file({k: v.contiguous() for k, v in best_state.items()}, str(stage / "best.safetensors"))
            state = {**run, "seconds": time.perf_counter() - started}
            extra = {"param_groups": optimizer_state["param_groups"], "scheduler": scheduler.state_dict()}
            write_json(stage / "state.json", {"config": _identity(config), "run": state, **extra})
    acc.wait_for_everyone()


def _load_state(
    out: str | Path, config: Schedule, model: Any, optimizer: Any, scheduler: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore what ``_save_state`` wrote; the run's settings must be the same."""
    import json

    from safetensors.torch import load_file, load_model

    folder = resume_dir(out)
    saved = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    changed = sorted(k for k, v in _identity(config).items() if saved["config"].get(k) != v)
    if changed:
        raise ModelError(f"--resume: the interrupted run at '{folder}' used other {', '.join(changed)}")
    load_model(model, str(folder / "model.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in load_file(str(folder / "optimizer.safetensors")).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    scheduler.load_state_dict(saved["scheduler"])
    best = folder / "best.safetensors"
    log.info("resuming '%s' at step %d", folder, saved["run"]["step"])
    return saved["run"], load_file(str(best)) if best.is_file() else {}
