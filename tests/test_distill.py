"""Distillation on a tiny task: the student follows the teacher's soft predictions more closely
than the same student trained on the hard labels alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from edgebert.cli import main
from edgebert.errors import ModelError
from edgebert.training import DistillConfig, TrainConfig, distill, train


@pytest.fixture(scope="module")
def teacher(
    tiny_classifier: Path, sentiment_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "teacher"
    train_file, dev_file = map(str, sentiment_files)
    summary = train(
        out,
        TrainConfig(
            data=train_file, eval_data=dev_file, model=str(tiny_classifier), epochs=3, batch_size=16, lr=3e-3
        ),
    )
    assert summary["dev_accuracy"] > 0.9
    return out


def _kl_to_teacher(teacher: Path, student: Path, texts: list[str]) -> float:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        p = AutoModelForSequenceClassification.from_pretrained(teacher).eval()(**batch).logits.log_softmax(-1)
        q = AutoModelForSequenceClassification.from_pretrained(student).eval()(**batch).logits.log_softmax(-1)
    return float(torch.nn.functional.kl_div(q, p, reduction="batchmean", log_target=True))


def test_soft_targets_reach_the_teacher_better_than_labels(
    teacher: Path, sentiment_files: tuple[Path, Path], tmp_path: Path
) -> None:
    from conftest import sentiment_rows

    train_file, dev_file = map(str, sentiment_files)
    common: dict[str, Any] = {
        "teacher": str(teacher),
        "data": train_file,
        "eval_data": dev_file,
        "student_layers": 1,
        "epochs": 2,
        "batch_size": 16,
        "lr": 1e-3,
        "temperature": 2.0,
    }
    soft = distill(tmp_path / "soft", DistillConfig(**common, alpha=0.9))
    hard = distill(tmp_path / "hard", DistillConfig(**common, alpha=0.0))
    texts = [t for t, _ in sentiment_rows(128, 9)]
    assert _kl_to_teacher(teacher, tmp_path / "soft", texts) < _kl_to_teacher(
        teacher, tmp_path / "hard", texts
    )
    assert soft["student"] == {"from": "teacher layers", "layers": [0]}
    config = json.loads((tmp_path / "soft" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["id2label"] == {"0": "negative", "1": "positive"}
    assert hard["kept_of_teacher"] >= 0.0


def test_teacher_logits_come_per_batch_when_the_run_reads_fewer_texts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """4 steps of 32 read 128 texts in one process, 256 in two (each step reads a batch in each)."""
    from edgebert.training.distill import _teacher_per_batch

    config = DistillConfig(teacher="t", data="d", eval_data="e", max_steps=4, batch_size=32)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert _teacher_per_batch(config, 256, same_tokenizer=True)
    assert not _teacher_per_batch(config, 256, same_tokenizer=False)  # the teacher reads its own ids
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun --nproc-per-node 2 sets it
    assert not _teacher_per_batch(config, 256, same_tokenizer=True)
    assert _teacher_per_batch(config, 257, same_tokenizer=True)


def test_distill_command_and_export(
    teacher: Path, sentiment_files: tuple[Path, Path], tmp_path: Path
) -> None:
    train_file, dev_file = map(str, sentiment_files)
    command = ["distill", "--teacher", str(teacher), "--data", train_file, "--eval", dev_file]
    narrow = ["--max-steps", "4", "--student-ffn", "48", "--out", str(tmp_path / "s"), "--json"]
    result = CliRunner().invoke(main, [*command, *narrow])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["steps"] == 4 and summary["student"]["ffn"] == {"kept": 48, "of": 128, "scored_on": 256}
    # 4 steps of 32 read half the 256 texts: no pass of the teacher over all of them first
    assert summary["teacher_logits"] == "from its pass over each training batch"
    assert json.loads((tmp_path / "s" / "config.json").read_text())["intermediate_size"] == 48
    exported = CliRunner().invoke(main, ["export", "-m", str(tmp_path / "s"), "-o", str(tmp_path / "b")])
    assert exported.exit_code == 0, exported.stderr
    wrong = CliRunner().invoke(main, [*command, "--student-layers", "9", "--out", str(tmp_path / "x")])
    assert wrong.exit_code == 1 and "must be 1..2" in wrong.stderr
    wide = CliRunner().invoke(main, [*command, "--student-ffn", "129", "--out", str(tmp_path / "x")])
    assert wide.exit_code == 1 and "--student-ffn 129 must be 1..128" in wide.stderr
    assert not (tmp_path / "x").exists()


def test_a_narrower_ffn_keeps_the_neurons_that_add_to_the_output(
    teacher: Path, sentiment_files: tuple[Path, Path]
) -> None:
    """With a third of each layer's FFN neurons silenced (zero output weights), narrowing to the
    rest keeps exactly the rest: the model's outputs do not change."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from conftest import sentiment_rows
    from edgebert.training.distill import _narrow_ffn

    model = AutoModelForSequenceClassification.from_pretrained(teacher).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    silent = torch.arange(model.config.intermediate_size) % 3 == 0
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.output.dense.weight[:, silent] = 0
    texts = [t for t, _ in sentiment_rows(32, 5)]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**batch).logits
    train_file, dev_file = map(str, sentiment_files)
    width = int((~silent).sum())
    config = DistillConfig(teacher=str(teacher), data=train_file, eval_data=dev_file, student_ffn=width)
    assert _narrow_ffn(model, tokenizer, texts, width, config) == {"kept": width, "of": 128, "scored_on": 32}
    assert model.config.intermediate_size == width
    assert model.bert.encoder.layer[0].output.dense.weight.shape[1] == width
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, before)


def test_student_from_another_checkpoint(
    teacher: Path, tiny_embedder: Path, sentiment_files: tuple[Path, Path], tmp_path: Path
) -> None:
    train_file, dev_file = map(str, sentiment_files)
    config = DistillConfig(
        teacher=str(teacher),
        data=train_file,
        eval_data=dev_file,
        student=str(tiny_embedder),
        max_steps=2,
        batch_size=8,
    )
    summary = distill(tmp_path / "s", config)
    assert summary["student"] == {"from": "tiny-embed"} and summary["steps"] == 2
    assert json.loads((tmp_path / "s" / "config.json").read_text())["architectures"] == [
        "BertForSequenceClassification"
    ]


def test_a_teacher_without_a_head_is_refused(
    tiny_embedder: Path, sentiment_files: tuple[Path, Path], tmp_path: Path
) -> None:
    from edgebert.errors import ModelError

    train_file, dev_file = map(str, sentiment_files)
    config = DistillConfig(teacher=str(tiny_embedder), data=train_file, eval_data=dev_file, max_steps=1)
    with pytest.raises(ModelError, match="it has no classification head"):  # not transformers' LABEL_0/1
        distill(tmp_path / "s", config)


def _hidden_gap(teacher: Path, student: Path, texts: list[str]) -> float:
    """MSE between the student's last layer output and the teacher's (a 1-layer student learns
    from the teacher's layer 2)."""
    from transformers import AutoModel, AutoTokenizer

    batch = AutoTokenizer.from_pretrained(teacher)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = AutoModel.from_pretrained(student).eval()(**batch).last_hidden_state
        theirs = AutoModel.from_pretrained(teacher).eval()(**batch).last_hidden_state
    return float(torch.nn.functional.mse_loss(ours, theirs))


def test_the_teacher_s_logits_per_batch_are_those_computed_before(teacher: Path) -> None:
    import copy

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from conftest import sentiment_rows
    from edgebert.training.distill import _logits, _loss

    model = AutoModelForSequenceClassification.from_pretrained(teacher).eval()
    student = copy.deepcopy(model)
    student.classifier.weight.data *= 0.5  # another model's logits, so that the soft loss is not 0
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    texts = [t for t, _ in sentiment_rows(16, 3)]
    labels = torch.zeros(16, dtype=torch.long)
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"), labels=labels)
    loss_of = _loss(model, DistillConfig(teacher=str(teacher), data="-", eval_data="-", alpha=1.0), [])
    with torch.no_grad():
        before = loss_of(student, {**batch, "teacher_logits": _logits(model, tokenizer, texts, 128)})
        per_batch = loss_of(student, dict(batch))
    assert float(before) > 1e-4 and float(per_batch) == pytest.approx(float(before), rel=1e-4)


def test_a_short_run_resumed_after_sigkill_ends_with_the_same_student(
    teacher: Path, sentiment_files: tuple[Path, Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file
    from test_kill import CLI, kill_when

    # 12 steps of 8 read fewer than the 256 texts: the teacher's logits come batch by batch, also
    # after a resume
    train_file, dev_file = map(str, sentiment_files)
    settings: dict[str, Any] = {
        "teacher": str(teacher),
        "data": train_file,
        "eval_data": dev_file,
        "student_layers": 1,
    }
    schedule: dict[str, Any] = {"max_steps": 12, "batch_size": 8, "save_every": 3, "lr": 1e-3}
    whole = distill(tmp_path / "whole", DistillConfig(**settings, **schedule))
    assert whole["teacher_logits"] == "from its pass over each training batch"
    out = tmp_path / "cut"
    command = [*CLI, "distill", "--teacher", str(teacher), "--data", train_file, "--eval", dev_file]
    options = ["--student-layers", "1", "--max-steps", "12", "--batch-size", "8", "--save-every", "3"]
    state = Path(f"{out}.resume") / "state.json"
    assert kill_when([*command, *options, "--lr", "1e-3", "-o", str(out)], tmp_path, lambda _: state.exists())
    assert 0 < json.loads(state.read_text())["run"]["step"] < 12
    resumed = distill(out, DistillConfig(**settings, **schedule, resume=True))
    assert resumed["history"] == whole["history"]
    ours, theirs = load_file(out / "model.safetensors"), load_file(tmp_path / "whole" / "model.safetensors")
    assert all((ours[k] == theirs[k]).all() for k in theirs)


def test_hidden_state_and_attention_transfer(
    teacher: Path, sentiment_files: tuple[Path, Path], tmp_path: Path
) -> None:
    from conftest import sentiment_rows

    train_file, dev_file = map(str, sentiment_files)
    common: dict[str, Any] = {
        "teacher": str(teacher),
        "data": train_file,
        "eval_data": dev_file,
        "student_layers": 1,
    }
    settings = {**common, "epochs": 2, "batch_size": 16, "lr": 1e-3}
    plain = distill(tmp_path / "plain", DistillConfig(**settings))
    transfer = distill(tmp_path / "t", DistillConfig(**settings, hidden_weight=1.0, attention_weight=1.0))
    texts = [t for t, _ in sentiment_rows(64, 11)]
    assert _hidden_gap(teacher, tmp_path / "t", texts) < _hidden_gap(teacher, tmp_path / "plain", texts)
    assert transfer["steps"] == plain["steps"]
    # transfer runs the teacher on every batch anyway: its logits come from there
    assert plain["teacher_logits"] == "computed before training"
    assert transfer["teacher_logits"] == "from its pass over each training batch"
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    narrow = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    BertForSequenceClassification(narrow).save_pretrained(tmp_path / "narrow")
    tokenizer.save_pretrained(tmp_path / "narrow")
    other = {**common, "student_layers": None, "student": str(tmp_path / "narrow"), "max_steps": 1}
    with pytest.raises(ModelError, match="transfer need a student with the teacher's tokenizer, hidden size"):
        distill(tmp_path / "x", DistillConfig(**other, hidden_weight=1.0))
