"""SIGKILL at several moments of export, quantize and train leaves the old state or the complete
new one, and no stray files beside it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import sentiment_rows, write_tsv
from edgebert.bundle import Bundle

CLI = [sys.executable, "-m", "edgebert.cli", "-q"]
Moment = Callable[[Path], bool]


def _staged(name: str) -> Moment:
    return lambda parent: any(parent.glob(f".*.partial/{name}"))


MOMENTS: dict[str, Moment] = {
    "staging directory created": lambda parent: any(parent.glob(".*.partial")),
    "tokenizer written": _staged("tokenizer.json"),
    "fp32 model written": _staged("model.onnx"),
    "int8 sensitivity probes running": _staged(".probe-*"),
    "int8 model written": _staged("model.int8.onnx"),
    "manifest written": _staged("manifest.json"),
}


def kill_when(command: list[str], parent: Path, moment: Moment | float) -> bool:
    """Run ``command``; SIGKILL it at ``moment`` (a file-system condition or seconds). True if killed."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    began = time.perf_counter()
    while process.poll() is None:
        due = time.perf_counter() - began >= moment if isinstance(moment, float) else moment(parent)
        if due:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.001)
    return False


def settled(parent: Path, expected: set[str]) -> set[str]:
    """What is in ``parent`` once the guard process has cleaned up (it gets a few seconds)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and set(os.listdir(parent)) - expected:
        time.sleep(0.05)
    return set(os.listdir(parent))


@pytest.mark.parametrize("moment", [*MOMENTS, 0.5, 2.0])
def test_killed_export_leaves_no_bundle_or_the_old_one(
    tiny_classifier: Path, classify_bundle: Path, tmp_path: Path, moment: str | float
) -> None:
    out = tmp_path / "bundle"
    shutil.copytree(classify_bundle, out)
    before = Bundle.load(out).manifest
    condition = MOMENTS[moment] if isinstance(moment, str) else moment
    command = [*CLI, "export", "-m", str(tiny_classifier), "--quantize", "int8", "-o", str(out), "--force"]
    killed = kill_when(command, tmp_path, condition)
    assert settled(tmp_path, {"bundle"}) == {"bundle"}
    after = Bundle.load(out).manifest  # verifies every checksum
    assert after == before or (not killed and after.created >= before.created)
    if isinstance(moment, str) and moment != "manifest written":
        assert killed, f"the export finished before '{moment}'"


@pytest.mark.parametrize("moment", ["staging directory created", "int8 sensitivity probes running", 1.0])
def test_killed_quantize_keeps_a_loadable_bundle(
    classify_bundle: Path, tmp_path: Path, moment: str | float
) -> None:
    out = tmp_path / "bundle"
    shutil.copytree(classify_bundle, out)
    condition = MOMENTS[moment] if isinstance(moment, str) else moment
    kill_when([*CLI, "quantize", str(out)], tmp_path, condition)
    assert settled(tmp_path, {"bundle"}) == {"bundle"}
    assert set(Bundle.load(out).models()) == {"fp32", "int8"}


@pytest.mark.parametrize("moment", [0.5, 2.0, 4.0])
def test_killed_training_leaves_no_half_checkpoint(
    tiny_classifier: Path, tmp_path: Path, moment: float
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    train, dev = (
        write_tsv(data / "train.tsv", sentiment_rows(512, 5)),
        write_tsv(data / "dev.tsv", sentiment_rows(32, 6)),
    )
    out = tmp_path / "model"
    command = [
        *CLI,
        "train",
        "--data",
        str(train),
        "--eval",
        str(dev),
        "-m",
        str(tiny_classifier),
        "-o",
        str(out),
    ]
    kill_when([*command, "--epochs", "3", "--batch-size", "8"], tmp_path, moment)
    left = settled(tmp_path, {"data", "model", "model.resume"})
    assert left <= {"data", "model", "model.resume"}
    if "model" in left:
        assert {"config.json", "model.safetensors", "training_summary.json"} <= set(os.listdir(out))
    if "model.resume" in left:  # what --resume continues from, complete
        assert {"model.safetensors", "optimizer.safetensors", "state.json"} <= set(
            os.listdir(f"{out}.resume")
        )


def test_ctrl_c_says_interrupted_exits_130_and_leaves_nothing(tiny_classifier: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    command = [*CLI, "export", "-m", str(tiny_classifier), "--quantize", "int8", "-o", str(out)]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # as a terminal's foreground command gets it: a shell's background job (a CI runner's, say)
        # inherits Ctrl-C ignored, and Python then never turns it into KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    while process.poll() is None and not MOMENTS["fp32 model written"](tmp_path):
        time.sleep(0.001)
    assert process.poll() is None, "the export finished before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted" and "Aborted" not in stderr
    assert settled(tmp_path, set()) == set()  # no bundle, no staging directory
