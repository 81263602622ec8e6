"""The training loop: an interrupted run resumes to the very weights of an uninterrupted one, early
stopping, two data-parallel processes (gloo), and precision that needs a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file
from test_kill import CLI, kill_when, settled

from conftest import sentiment_rows, write_tsv
from edgebert.cli import main
from edgebert.errors import ModelError
from edgebert.training import TrainConfig, train


@pytest.fixture()
def files(tmp_path: Path) -> tuple[str, str]:
    data = tmp_path / "data"
    data.mkdir()
    train_file = write_tsv(data / "train.tsv", sentiment_rows(384, 5))
    return str(train_file), str(write_tsv(data / "dev.tsv", sentiment_rows(32, 6)))


def _options(tiny_classifier: Path, files: tuple[str, str]) -> dict[str, object]:
    return {"data": files[0], "eval_data": files[1], "model": str(tiny_classifier), "epochs": 3}


def test_resume_after_sigkill_matches_an_uninterrupted_run(
    tiny_classifier: Path, files: tuple[str, str], tmp_path: Path
) -> None:
    options = {**_options(tiny_classifier, files), "batch_size": 8, "save_every": 7}
    whole = train(tmp_path / "whole", TrainConfig(**options))  # type: ignore[arg-type]
    out = tmp_path / "cut"
    command = [
        *CLI,
        "train",
        "--data",
        files[0],
        "--eval",
        files[1],
        "-m",
        str(tiny_classifier),
        "-o",
        str(out),
    ]
    state = Path(f"{out}.resume") / "state.json"
    schedule = ["--epochs", "3", "--batch-size", "8", "--save-every", "7"]
    killed = kill_when([*command, *schedule], tmp_path, lambda _: state.exists())
    assert killed and not out.exists()
    assert settled(tmp_path, {"data", "whole", "cut.resume"}) == {"data", "whole", "cut.resume"}
    stopped_at = json.loads(state.read_text())["run"]["step"]
    with pytest.raises(ModelError, match="pass --resume to continue it or --force"):
        train(out, TrainConfig(**options))  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="used other lr"):
        train(out, TrainConfig(**options, lr=1e-3, resume=True))  # type: ignore[arg-type]
    resumed = train(out, TrainConfig(**options, resume=True))  # type: ignore[arg-type]
    assert 0 < stopped_at < resumed["steps"] == whole["steps"] == 3 * 48
    assert resumed["history"] == whole["history"]
    ours, theirs = load_file(out / "model.safetensors"), load_file(tmp_path / "whole" / "model.safetensors")
    assert all((ours[k] == theirs[k]).all() for k in theirs)
    assert not Path(f"{out}.resume").exists()
    with pytest.raises(ModelError, match="no interrupted run"):
        train(tmp_path / "other", TrainConfig(**options, resume=True))  # type: ignore[arg-type]


def test_early_stopping(tiny_classifier: Path, files: tuple[str, str], tmp_path: Path) -> None:
    # a learning rate too small to change a prediction: dev accuracy never improves after epoch 1
    options = {**_options(tiny_classifier, files), "epochs": 5, "lr": 1e-12, "batch_size": 32, "patience": 2}
    summary = train(tmp_path / "m", TrainConfig(**options))  # type: ignore[arg-type]
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    assert summary["best_epoch"] == 1 and summary["stopped_early"] and summary["steps"] == 3 * 12


def test_two_processes_with_gloo(tiny_classifier: Path, files: tuple[str, str], tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command = [*launch, "-m", "edgebert.cli", "-q", "train", "--data", files[0], "--eval", files[1]]
    run = subprocess.run(
        [*command, "-m", str(tiny_classifier), "-o", str(out), "--batch-size", "16", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)  # one summary: the second process prints nothing
    assert summary["processes"] == 2 and summary["replicas_in_sync"]
    assert summary["steps"] == 384 // 16 // 2  # each process takes every other batch
    assert json.loads((out / "training_summary.json").read_text())["processes"] == 2


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_mixed_precision_needs_a_gpu(tiny_classifier: Path, files: tuple[str, str], tmp_path: Path) -> None:
    if _cuda():
        pytest.skip("a CUDA GPU is visible: test_mixed_precision_on_a_gpu runs instead")
    arguments = ["train", "--data", files[0], "--eval", files[1], "-m", str(tiny_classifier)]
    result = CliRunner().invoke(main, [*arguments, "-o", str(tmp_path / "m"), "--precision", "fp16"])
    assert result.exit_code == 1
    assert "--precision fp16 needs a CUDA GPU and none is visible" in result.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_a_gpu(
    tiny_classifier: Path, files: tuple[str, str], tmp_path: Path, precision: str
) -> None:
    if not _cuda():
        pytest.skip("needs a CUDA GPU (none is visible)")
    from edgebert.exporter import ExportConfig, export

    options = {**_options(tiny_classifier, files), "epochs": 1, "batch_size": 32, "precision": precision}
    summary = train(tmp_path / "m", TrainConfig(**options))  # type: ignore[arg-type]
    assert summary["precision"] == precision and summary["steps"] == 384 // 32
    assert 0 <= summary["history"][0]["dev_accuracy"] <= 1
    weights = load_file(tmp_path / "m" / "model.safetensors")
    assert {str(w.dtype) for w in weights.values()} == {"torch.float32"}  # autocast, fp32 master weights
    bundle = export(tmp_path / "b", ExportConfig(model=str(tmp_path / "m")))  # on the CPU, vs torch
    assert bundle.manifest.artifacts["fp32"].validation["max_abs_diff"] < 1e-4


def test_a_resumed_run_names_its_files_however_they_are_written(
    sentiment_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgebert.training.loop import Schedule, _identity

    train, dev = sentiment_files
    monkeypatch.chdir(train.parent)
    relative = Schedule(data=train.name, eval_data=f"./{dev.name}")
    assert _identity(relative) == _identity(Schedule(data=str(train), eval_data=str(dev)))
    assert _identity(relative) != _identity(Schedule(data=str(dev), eval_data=str(dev)))
