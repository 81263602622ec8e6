from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import embeddings
from edgebert.bundle import Bundle
from edgebert.errors import EdgebertError, ModelError, ValidationError
from edgebert.exporter import ExportConfig, export
from edgebert.runtime import Predictor


def test_classify_bundle_records_validation(classify_bundle: Path) -> None:
    manifest = Bundle.load(classify_bundle).manifest
    assert manifest.task == "classify" and manifest.labels == ("negative", "positive")
    fp32, int8 = manifest.artifacts["fp32"], manifest.artifacts["int8"]
    assert fp32.validation["against"] == "torch"
    assert 0 <= fp32.validation["max_abs_diff"] <= fp32.validation["tolerance"]
    assert fp32.made_by["opset"] == 17 and fp32.made_by["fusion"] is None
    assert fp32.made_by["attention"] == "transformers eager"
    ops = {node.op_type for node in onnx.load(str(classify_bundle / "model.onnx")).graph.node}
    assert "Sqrt" not in ops  # eager: a constant scale, where SDPA computes it from shapes
    assert int8.validation["against"] == "fp32" and int8.validation["agreement"] >= 0.9
    assert int8.made_by["weights"] == "int8 per-channel"
    assert (classify_bundle / "model.int8.onnx").stat().st_size < 0.5 * (
        classify_bundle / "model.onnx"
    ).stat().st_size
    assert set(manifest.versions) >= {"torch", "transformers", "onnxruntime", "edgebert"}


def test_embed_bundle_follows_torch_pooling(embed_bundle: Path, tiny_embedder: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    manifest = Bundle.load(embed_bundle).manifest
    assert manifest.task == "embed" and manifest.pooling == {
        "mode": "mean",
        "normalize": True,
        "source": "modules.json",
    }
    texts = ["a short one", "and a rather longer sentence about batteries"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_embedder)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(tiny_embedder)(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    got = embeddings(Predictor(embed_bundle, precision="fp32").predict(texts))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_classifier_last_layer_runs_the_first_token_only(
    classify_bundle: Path, embed_bundle: Path, tiny_classifier: Path
) -> None:
    """The head reads the first token alone, so the exported last layer computes its feed-forward
    block for that token only, and the model still answers as the unmodified torch model does."""
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    fp32 = Bundle.load(classify_bundle).manifest.artifacts["fp32"]
    assert fp32.made_by["last_layer"].startswith("first token only")
    assert "last_layer" not in Bundle.load(embed_bundle).manifest.artifacts["fp32"].made_by  # mean pooling

    texts = ["short", "a somewhat longer sentence about the battery life of this phone", "two words"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = AutoModelForSequenceClassification.from_pretrained(tiny_classifier)(**batch).logits.numpy()
    feeds = {k: v.numpy() for k, v in batch.items()}
    model = onnx.load(str(classify_bundle / "model.onnx"))

    # the last layer's nodes are named as every other layer's (the quantizer finds them by name)
    def names(layer: int) -> set[str]:
        scope = f"/model/bert/encoder/layer.{layer}/"
        return {n.name.removeprefix(scope) for n in model.graph.node if n.name.startswith(scope)}

    dense = {f"attention/self/{w}/MatMul" for w in ("query", "key", "value")}
    dense |= {"attention/output/dense/MatMul", "intermediate/dense/MatMul", "output/dense/MatMul"}
    assert names(0) >= dense and names(1) >= dense
    ffn = [f"/model/bert/encoder/layer.{i}/output/dense/MatMul" for i in (0, 1)]
    ffn = [n.output[0] for name in ffn for n in model.graph.node if n.name == name]
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in ffn)
    logits, *ffn_outputs = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    assert [out.shape[1] for out in ffn_outputs] == [feeds["input_ids"].shape[1], 1]


def test_cls_pooled_embedder_runs_the_first_token_only(tiny_embedder: Path, tmp_path: Path) -> None:
    import json
    import shutil

    import torch
    from transformers import AutoModel, AutoTokenizer

    checkpoint = tmp_path / "cls-embedder"
    shutil.copytree(tiny_embedder, checkpoint)
    (checkpoint / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    bundle = export(tmp_path / "bundle", ExportConfig(model=str(checkpoint)))
    assert bundle.manifest.pooling is not None and bundle.manifest.pooling["mode"] == "cls"
    assert bundle.manifest.artifacts["fp32"].made_by["last_layer"].startswith("first token only")
    texts = ["a short one", "and a rather longer sentence about batteries"]
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(checkpoint)(**tokenizer(texts, padding=True, return_tensors="pt"))
    expected = torch.nn.functional.normalize(hidden.last_hidden_state[:, 0], dim=1).numpy()
    got = embeddings(Predictor(bundle.path, precision="fp32").predict(texts))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_dynamic_axes(classify_bundle: Path) -> None:
    predictor = Predictor(classify_bundle, precision="fp32")
    for batch, length in ((1, 5), (3, 40)):
        feeds = {k: np.ones((batch, length), dtype=np.int64) for k in predictor.input_names}
        assert predictor.session.run(None, feeds)[0].shape == (batch, 2)


def test_failed_validation_leaves_nothing(tiny_classifier: Path, tmp_path: Path) -> None:
    before = set(os.listdir(Path.cwd()))
    with pytest.raises(ValidationError, match="differs from torch"):
        export(tmp_path / "b", ExportConfig(model=str(tiny_classifier), tolerance=0.0))
    assert list(tmp_path.iterdir()) == []
    assert set(os.listdir(Path.cwd())) == before


def test_existing_out_needs_force(classify_bundle: Path, tiny_classifier: Path) -> None:
    with pytest.raises(EdgebertError, match="--force"):
        export(classify_bundle, ExportConfig(model=str(tiny_classifier)))


def test_model_errors(tiny_embedder: Path, tmp_path: Path) -> None:
    for bad, message in (
        ({"task": "bogus"}, "unknown --task"),
        ({"opset": 99}, "--opset 99"),
        ({"max_length": "32"}, "max-length"),
    ):
        with pytest.raises(EdgebertError, match=message):
            export(tmp_path / "x", ExportConfig(model=str(tiny_embedder), **bad))
    with pytest.raises(ModelError, match="never downloads"):
        export(tmp_path / "a", ExportConfig(model="bert-base-uncased"))
    with pytest.raises(ModelError, match="no classification head"):
        export(tmp_path / "b", ExportConfig(model=str(tiny_embedder), task="classify"))
    not_bert = tmp_path / "gpt"
    not_bert.mkdir()
    (not_bert / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ModelError, match="edgebert handles BERT checkpoints"):
        export(tmp_path / "c", ExportConfig(model=str(not_bert)))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text('{"model_type": "bert"}')
    (pickled / "pytorch_model.bin").write_bytes(b"\x80")
    with pytest.raises(ModelError, match="pickled"):
        export(tmp_path / "d", ExportConfig(model=str(pickled)))
    (pickled / "model.safetensors").write_bytes(b"\x10" * 100)  # a truncated copy
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        export(tmp_path / "e", ExportConfig(model=str(pickled)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt", "pickled"]


def test_fused_export_is_validated(tiny_classifier: Path, tmp_path: Path) -> None:
    bundle = export(tmp_path / "fused", ExportConfig(model=str(tiny_classifier), fuse=True, quantize="int8"))
    fp32 = bundle.manifest.artifacts["fp32"]
    assert fp32.made_by["fusion"]  # the optimizer fused something (e.g. SkipLayerNormalization)
    assert fp32.validation["max_abs_diff"] <= fp32.validation["tolerance"]
    assert bundle.manifest.artifacts["int8"].validation["agreement"] >= 0.9


def test_sentence_transformers_modules_it_cannot_export_are_refused(
    tiny_embedder: Path, tmp_path: Path
) -> None:
    import json
    import shutil

    from edgebert.models import resolve

    checkpoint = tmp_path / "embedder"
    shutil.copytree(tiny_embedder, checkpoint)
    pooling = checkpoint / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}))
    with pytest.raises(ModelError, match="pools with pooling_mode_max_tokens, pooling_mode_mean_tokens"):
        resolve(str(checkpoint))
    pooling.write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    modules = json.loads((checkpoint / "modules.json").read_text())
    modules.append({"idx": 9, "name": "9", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (checkpoint / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelError, match=r"modules edgebert does not export \(Dense\)"):
        resolve(str(checkpoint))


def _edited(source: Path, where: Path, **config: object) -> Path:
    """A copy of checkpoint ``source`` whose config.json has ``config`` set (None: removed)."""
    import json
    import shutil

    shutil.copytree(source, where)
    settings = json.loads((where / "config.json").read_text())
    settings.update(config)
    (where / "config.json").write_text(json.dumps({k: v for k, v in settings.items() if v is not None}))
    return where


def test_classifier_heads_it_cannot_read_are_refused_before_anything_is_written(
    tiny_classifier: Path, tmp_path: Path
) -> None:
    # transformers leaves default label names out of config.json: LABEL_0, LABEL_1 as it names them
    default = _edited(tiny_classifier, tmp_path / "default", id2label=None, label2id=None)
    assert export(tmp_path / "a", ExportConfig(model=str(default))).manifest.labels == ("LABEL_0", "LABEL_1")
    # no architectures in its config: its weights say it has a classification head
    bare = _edited(tiny_classifier, tmp_path / "bare", architectures=None)
    assert export(tmp_path / "b", ExportConfig(model=str(bare))).manifest.task == "classify"
    multi = _edited(tiny_classifier, tmp_path / "multi", problem_type="multi_label_classification")
    with pytest.raises(ModelError, match="multi-label classifier"):
        export(tmp_path / "c", ExportConfig(model=str(multi)))
    regression = _edited(tiny_classifier, tmp_path / "regression", id2label=None, label2id=None, num_labels=1)
    with pytest.raises(ModelError, match=r"a head of 1 output\(s\) \(regression\)"):
        export(tmp_path / "d", ExportConfig(model=str(regression)))
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_max_length_stops_at_the_model_s_positions(
    tiny_classifier: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    bundle = export(tmp_path / "b", ExportConfig(model=str(tiny_classifier), max_length=512))
    assert bundle.manifest.max_length == 128  # the tiny BERT's max_position_embeddings
    (result,) = Predictor(bundle).predict(["word " * 400])
    assert result.truncated
    # and at its tokenizer's model_max_length, where Hugging Face's pipeline would cut texts
    short = _edited(tiny_classifier, tmp_path / "short")
    settings = json.loads((short / "tokenizer_config.json").read_text())
    (short / "tokenizer_config.json").write_text(json.dumps({**settings, "model_max_length": 32}))
    assert export(tmp_path / "s", ExportConfig(model=str(short))).manifest.max_length == 32
    # a fine-tuned checkpoint cut at another length than its training's is said to answer otherwise
    (short / "training_summary.json").write_text(json.dumps({"config": {"max_length": 16}}))
    caplog.clear()
    export(tmp_path / "t", ExportConfig(model=str(short)))
    assert "fine-tuned, and its dev accuracy measured, on texts cut at 16 tokens" in caplog.text
    caplog.clear()
    export(tmp_path / "u", ExportConfig(model=str(short), max_length=16))
    assert "fine-tuned" not in caplog.text


def test_pairs_are_validated_and_refused_where_the_model_has_one_token_type(tmp_path: Path) -> None:
    from conftest import _tiny_checkpoint
    from edgebert.errors import InputError

    paired = export(
        tmp_path / "two", ExportConfig(model=str(_tiny_checkpoint(tmp_path / "m2", classify=True)))
    )
    assert paired.manifest.artifacts["fp32"].validation["pairs"] == 8
    one = _tiny_checkpoint(tmp_path / "m1", classify=True, type_vocab_size=1)
    bundle = export(tmp_path / "one", ExportConfig(model=str(one)))
    assert bundle.manifest.artifacts["fp32"].validation["pairs"] == 0
    assert Predictor(bundle).predict(["one text"])[0].label
    with pytest.raises(InputError, match="takes no sentence pairs"):
        Predictor(bundle).predict([("a question", "an answer")])


def test_malformed_checkpoints_are_one_line_errors(tiny_embedder: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from edgebert.models import resolve

    listed = _edited(tiny_embedder, tmp_path / "list")
    (listed / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelError, match="holds a JSON list, not the dict it should"):
        resolve(str(listed))
    broken = tmp_path / "modules"
    shutil.copytree(tiny_embedder, broken)
    (broken / "modules.json").write_text("[{bad json")
    with pytest.raises(ModelError, match=r"modules\.json' is not readable JSON"):
        resolve(str(broken))
    (broken / "modules.json").write_text(json.dumps([{"idx": 0, "path": ""}]))
    with pytest.raises(ModelError, match="lists a module without its type"):
        resolve(str(broken))
    # only the weights transformers loads are read: a stray file beside them is not
    (broken / "modules.json").unlink()
    (broken / "old.safetensors").write_bytes(b"\x10" * 10)
    assert resolve(str(broken)).task == "embed"


def test_sentence_transformers_settings_are_kept(tiny_embedder: Path, tmp_path: Path) -> None:
    import json

    cased = _edited(tiny_embedder, tmp_path / "cased")
    tokenizer = json.loads((cased / "tokenizer.json").read_text())
    tokenizer["normalizer"]["lowercase"] = False  # a cased tokenizer, as some checkpoints have
    (cased / "tokenizer.json").write_text(json.dumps(tokenizer))
    (cased / "tokenizer_config.json").write_text(
        json.dumps({**json.loads((cased / "tokenizer_config.json").read_text()), "do_lower_case": False})
    )
    before = Predictor(export(tmp_path / "a", ExportConfig(model=str(cased)))).outputs(
        ["The Plot", "the plot"]
    )[0]
    assert not np.allclose(before[0], before[1])  # cased: two texts
    (cased / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 48, "do_lower_case": True})
    )
    bundle = export(tmp_path / "b", ExportConfig(model=str(cased)))
    after = Predictor(bundle).outputs(["The Plot", "the plot"])[0]
    assert np.allclose(after[0], after[1], atol=1e-6)  # sentence-transformers lowercases first
    # and cuts texts where it says, unless --max-length says otherwise (the default without it: 128)
    assert bundle.manifest.max_length == 48
    assert Bundle.load(tmp_path / "a").manifest.max_length == 128
    assert export(tmp_path / "c", ExportConfig(model=str(cased), max_length=64)).manifest.max_length == 64


def test_a_missing_model_is_pointed_at_the_hub_only_by_a_hub_id(tmp_path: Path) -> None:
    from edgebert.models import resolve

    with pytest.raises(ModelError, match="hf download google-bert/bert-base-uncased --local-dir"):
        resolve("google-bert/bert-base-uncased")
    with pytest.raises(ModelError, match="hf download ORG/NAME --local-dir") as missing:
        resolve(str(tmp_path / "no-such-model"))  # a path: never offered as a hub id
    assert "no-such-model --local-dir" not in str(missing.value)


def test_the_default_model_is_its_pinned_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgebert import models

    assert models.resolve(None).name == "all-MiniLM-L6-v2"  # the installed package's weights match
    monkeypatch.setattr(models, "DEFAULT_WEIGHTS_SHA256", "0" * 64)  # as if the package brought others
    with pytest.raises(ModelError, match="is not the all-MiniLM-L6-v2 weights edgebert was made for"):
        models.resolve(None)
