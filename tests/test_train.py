from __future__ import annotations

from pathlib import Path

import pytest

from conftest import sentiment_rows, write_tsv
from edgebert.errors import DataError
from edgebert.training import TrainConfig, train


def test_sentence_pairs_and_max_steps(tiny_classifier: Path, tmp_path: Path) -> None:
    rows = sentiment_rows(64, 3)
    pairs = [f"{label}\tx\ty\t{text}\t{text.split()[1]}\n" for text, label in rows]
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    (tmp_path / "train.tsv").write_text(header + "".join(pairs))
    (tmp_path / "dev.tsv").write_text(header + "".join(pairs[:16]))
    summary = train(
        tmp_path / "m",
        TrainConfig(
            data=str(tmp_path / "train.tsv"),
            eval_data=str(tmp_path / "dev.tsv"),
            model=str(tiny_classifier),
            max_steps=3,
            batch_size=8,
        ),
    )
    assert summary["steps"] == 3
    assert summary["labels"] == ["negative", "positive"]
    assert (tmp_path / "m" / "training_summary.json").is_file()
    # a dev file of single texts does not measure a pair task: refused before training
    write_tsv(tmp_path / "single.tsv", rows[:16])
    config = TrainConfig(
        data=str(tmp_path / "train.tsv"), eval_data=str(tmp_path / "single.tsv"), max_steps=1
    )
    with pytest.raises(DataError, match=r"holds sentence pairs and .* single texts"):
        train(tmp_path / "n", config)


def test_multiclass_label_names_are_kept(tiny_classifier: Path, tmp_path: Path) -> None:
    import json

    rows = [(t, ["joy", "anger", "fear"][i % 3]) for i, (t, _) in enumerate(sentiment_rows(30, 4))]
    write_tsv(tmp_path / "train.tsv", rows)
    write_tsv(tmp_path / "dev.tsv", rows[:9])
    train(
        tmp_path / "m",
        TrainConfig(
            data=str(tmp_path / "train.tsv"),
            eval_data=str(tmp_path / "dev.tsv"),
            model=str(tiny_classifier),
            max_steps=2,
            batch_size=8,
        ),
    )
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["id2label"] == {"0": "anger", "1": "fear", "2": "joy"}


def test_a_base_classifier_keeps_its_labels_only_for_its_own_classes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from edgebert.training.finetune import head_labels

    base = ("negative", "positive")
    assert head_labels(base, ("0", "1")) == base  # SST-2's integer labels index the base's classes
    assert "labels 0, 1 are read as the base model's classes negative, positive" in caplog.text
    assert head_labels(("1", "2"), ("0", "1")) == ("0", "1")  # integer classes match by name only
    assert head_labels(base, ("positive", "negative")) == base  # in the head's order, not sorted
    assert head_labels(base, ("favorable", "unfavorable")) == ("favorable", "unfavorable")  # a new head
    assert head_labels((), ("0", "1")) == ("0", "1")


def test_an_out_not_a_checkpoint_is_refused_before_training(tiny_classifier: Path, tmp_path: Path) -> None:
    import pytest

    from edgebert.errors import EdgebertError

    data = write_tsv(tmp_path / "train.tsv", sentiment_rows(16, 5))
    dev = write_tsv(tmp_path / "dev.tsv", sentiment_rows(8, 6))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("the user's")
    config = TrainConfig(data=str(data), eval_data=str(dev), model=str(tiny_classifier), force=True)
    with pytest.raises(EdgebertError, match="holds no config"):
        train(tmp_path / "mine", config)
    # nothing was trained: no resumable state was saved, and the directory is as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.tsv", "mine", "train.tsv"]
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["keep.txt"]
