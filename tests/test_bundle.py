from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from edgebert.atomic import file_mode, staging, write_json
from edgebert.bundle import FORMAT_VERSION, MANIFEST, Bundle, Manifest, read_manifest, write_manifest
from edgebert.errors import BundleError, EdgebertError


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "copy"))


def test_manifest_round_trips(classify_bundle: Path) -> None:
    manifest = read_manifest(classify_bundle)
    again = Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert again == manifest
    assert manifest.format_version == FORMAT_VERSION
    assert set(manifest.artifacts) == {"tokenizer", "fp32", "int8", "int8-fused", "int8.data"}
    assert manifest.artifacts["int8"].parent == "fp32"


@pytest.mark.parametrize("file", ["model.int8.onnx", "model.int8.onnx.data"])  # a graph, its weights
def test_flipped_byte_is_refused(classify_bundle: Path, tmp_path: Path, file: str) -> None:
    copy = _copy(classify_bundle, tmp_path)
    model = copy / file
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{re.escape(file)}' does not match its sha256"):
        Bundle.load(copy)


def test_missing_and_unknown_files_are_refused(classify_bundle: Path, tmp_path: Path) -> None:
    copy = _copy(classify_bundle, tmp_path)
    (copy / "stray.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"stray\.bin"):
        Bundle.load(copy)
    (copy / "stray.bin").unlink()
    (copy / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"tokenizer\.json.*missing"):
        Bundle.load(copy)


def test_newer_format_and_path_escape_are_refused(classify_bundle: Path, tmp_path: Path) -> None:
    copy = _copy(classify_bundle, tmp_path)
    data = json.loads((copy / MANIFEST).read_text())
    data["format_version"] = FORMAT_VERSION + 1
    (copy / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="upgrade edgebert"):
        Bundle.load(copy)
    data["format_version"] = FORMAT_VERSION
    data["artifacts"]["fp32"]["file"] = "../model.onnx"
    (copy / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="outside"):
        Bundle.load(copy)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="edgebert export"):
        Bundle.load(tmp_path / "nothing")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="not a valid manifest"):
        Bundle.load(tmp_path / "broken")


def test_staging_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), staging(target) as stage:
        (stage / "half.onnx").write_bytes(b"partial")
        raise RuntimeError("crash in the middle")
    assert list(tmp_path.iterdir()) == []


def test_staging_replaces_only_with_consent(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with staging(target) as stage:
        write_json(stage / MANIFEST, {"format_version": 1})
    with pytest.raises(EdgebertError, match="--force"), staging(target):
        pass
    with staging(target, replace=True) as stage:
        write_json(stage / MANIFEST, {"format_version": 1, "second": True})
    assert json.loads((target / MANIFEST).read_text())["second"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    user_dir = tmp_path / "documents"
    user_dir.mkdir()
    (user_dir / "thesis.txt").write_text("precious")
    with pytest.raises(EdgebertError, match="refusing"), staging(user_dir, replace=True):
        pass
    assert (user_dir / "thesis.txt").read_text() == "precious"


def test_bundle_files_are_readable_like_any_new_file(classify_bundle: Path) -> None:
    # mkstemp, onnx's external data and safetensors create files 0600: a bundle must load for other users
    mode = file_mode()
    modes = {p.name: p.stat().st_mode & 0o777 for p in classify_bundle.iterdir() if p.is_file()}
    assert "model.int8.onnx.data" in modes and "manifest.json" in modes
    assert set(modes.values()) == {mode}, modes


def test_format_1_bundles_still_load(classify_bundle: Path, tmp_path: Path) -> None:
    """A genuine format-1 bundle (graph output named 'output', no output_name) migrates and predicts alike."""
    import hashlib

    import onnx

    from edgebert.runtime import Predictor

    old = _copy(classify_bundle, tmp_path)
    data = json.loads((old / MANIFEST).read_text())
    for name in ("fp32", "int8"):
        path = old / data["artifacts"][name]["file"]
        model = onnx.load(str(path))
        for node in model.graph.node:
            node.output[:] = ["output" if o == "logits" else o for o in node.output]
        model.graph.output[0].name = "output"
        onnx.save(model, str(path))  # its weights inline: format 1 had one file per model
        data["artifacts"][name]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    for name in ("int8-fused", "int8.data"):
        (old / data["artifacts"].pop(name)["file"]).unlink()
    del data["output_name"]
    data["format_version"] = 1
    (old / MANIFEST).write_text(json.dumps(data))

    migrated = Bundle.load(old).manifest
    assert migrated.format_version == FORMAT_VERSION and migrated.output_name == "output"
    assert Manifest.from_dict(json.loads(json.dumps(migrated.to_dict()))) == migrated
    texts = ["a wonderful film", "dull and boring"]
    assert Predictor(old).predict(texts) == Predictor(classify_bundle).predict(texts)


def _point_weights_at(model_path: Path, location: str) -> None:
    """Move the largest initializer of an ONNX model out to external data at ``location``."""
    import onnx

    model = onnx.load(str(model_path))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    onnx.save(model, str(model_path))


def _reseal(bundle: Path) -> None:
    """Recompute every sha256 in the manifest, as an attacker who also rewrites the manifest would."""
    from edgebert.bundle import sha256

    data = json.loads((bundle / MANIFEST).read_text())
    for artifact in data["artifacts"].values():
        artifact["sha256"] = sha256(bundle / artifact["file"])
    (bundle / MANIFEST).write_text(json.dumps(data))


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/hostname", "inside-link.bin"])
def test_external_data_cannot_leave_the_bundle(classify_bundle: Path, tmp_path: Path, location: str) -> None:
    from edgebert.runtime import BackendError, Predictor

    copy = _copy(classify_bundle, tmp_path)
    (tmp_path / "outside.bin").write_bytes(b"\0" * 4096)
    _point_weights_at(copy / "model.onnx", location)
    if location == "inside-link.bin":
        (copy / location).symlink_to(tmp_path / "outside.bin")
    _reseal(copy)
    with pytest.raises((BundleError, BackendError), match=r"escapes|Absolute path|inside-link\.bin"):
        Predictor(copy, precision="fp32")


def test_nothing_is_unpickled() -> None:
    """Checkpoints are safetensors; no module of edgebert loads a pickle."""
    root = Path(__file__).resolve().parents[1] / "edgebert"
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "torch.load(" not in text, path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(labels=["a"]), "two labels or more"),
        (lambda m: m.update(labels=None), "two labels or more"),
        (lambda m: m.update(artifacts=[]), "missing a field"),
        (lambda m: m.update(max_length="abc"), "not a number of tokens"),
        (lambda m: m.update(format_version="2"), "not a number"),
        (lambda m: m["artifacts"]["fp32"].update(file=123), "wrong type"),
        (lambda m: m["artifacts"].pop("tokenizer"), "no tokenizer"),
        (lambda m: m["artifacts"]["int8-fused"]["made_by"].pop("up_to_tokens"), "up_to_tokens"),
    ],
)
def test_hand_edited_manifests_are_refused(
    classify_bundle: Path, tmp_path: Path, edit: Any, message: str
) -> None:
    copy = _copy(classify_bundle, tmp_path)
    data = json.loads((copy / MANIFEST).read_text())
    edit(data)
    (copy / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message):
        Bundle.load(copy)


def test_labels_that_do_not_fit_the_model_are_refused(classify_bundle: Path, tmp_path: Path) -> None:
    from edgebert.runtime import Predictor

    copy = _copy(classify_bundle, tmp_path)
    data = json.loads((copy / MANIFEST).read_text())
    data["labels"] = ["a", "b", "c"]
    (copy / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="gives 2 scores for the 3 labels"):
        Predictor(copy).predict(["a good film"])


def test_a_manifest_loading_would_refuse_is_never_written(classify_bundle: Path, tmp_path: Path) -> None:
    import dataclasses

    manifest = Bundle.load(classify_bundle).manifest
    with pytest.raises(BundleError, match="a classifier needs two labels or more"):
        write_manifest(tmp_path, dataclasses.replace(manifest, labels=("only",)))
    assert not (tmp_path / "manifest.json").exists()
