from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from edgebert.atomic import file_mode, locked, staging, write_json
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
    for litter in (".DS_Store", "._model.onnx", "Thumbs.db"):  # a file manager's, not the bundle's
        (copy / litter).write_bytes(b"x")
    assert Bundle.load(copy).manifest.artifacts.keys()
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
        (lambda m: m.update(labels="negative,positive"), "labels must be a list"),
        (lambda m: m["artifacts"].pop("fp32"), "no fp32 model"),
        (lambda m: m["artifacts"]["fp32"].update(parent="int8"), "'fp32' descends from 'fp32', in a circle"),
        (lambda m: m["artifacts"]["int8"].update(parent="fp16"), "which it does not list"),
        (lambda m: m.update(labels=["same", "same"]), "a label is listed twice"),
        (lambda m: m.update(source=None), "source must be a mapping"),
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


def test_an_unreadable_tokenizer_is_one_clear_error(classify_bundle: Path, tmp_path: Path) -> None:
    from edgebert.runtime import Predictor

    copy = _copy(classify_bundle, tmp_path)
    (copy / "tokenizer.json").write_text('{"version": "1.0", "model": 7}')
    _reseal(copy)
    with pytest.raises(BundleError, match="not a tokenizer the tokenizers library reads"):
        Predictor(copy)


def test_what_a_killed_writer_and_its_guard_left_is_recovered(classify_bundle: Path, tmp_path: Path) -> None:
    """Writer and guard killed together between a swap's two renames: the old copy moved aside, a
    staging directory left. The next load (or write) puts the old copy back and removes the rest."""
    shutil.copytree(classify_bundle, tmp_path / ".bundle.0123456789ab.old")
    (tmp_path / ".bundle.0123456789ab.partial").mkdir()
    assert Bundle.load(tmp_path / "bundle").manifest.task == "classify"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    (tmp_path / ".bundle.ba9876543210.partial").mkdir()
    with staging(tmp_path / "bundle", replace=True) as stage:
        assert {p.name for p in tmp_path.iterdir()} == {"bundle", stage.name}


def test_a_live_writers_staging_directory_is_left_alone(tmp_path: Path) -> None:
    with staging(tmp_path / "out", replace=True) as first:
        (first / "a").write_text("a")
        with staging(tmp_path / "out", replace=True) as second:  # its clean-up must not take first's
            (second / "b").write_text("b")
        assert (first / "a").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a"]


def test_without_flock_nothing_is_recovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where there is no flock (Windows), a live writer's staging directory looks like a leftover:
    recovery leaves both kinds be rather than remove another process's work."""
    import edgebert.atomic

    monkeypatch.setattr(edgebert.atomic, "fcntl", None)
    (tmp_path / ".out.0123456789ab.partial").mkdir()
    (tmp_path / ".out.0123456789ab.old").mkdir()
    edgebert.atomic.recover(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".out.0123456789ab.old",
        ".out.0123456789ab.partial",
    ]


def test_names_up_to_the_longest_a_file_system_takes(tmp_path: Path) -> None:
    longest = tmp_path / ("b" * 255)
    with staging(longest) as stage:  # its staging directory's name is cut to fit
        (stage / "x").write_text("x")
    assert (longest / "x").is_file()
    with (
        pytest.raises(EdgebertError, match="longer than a file name may be"),
        staging(tmp_path / ("b" * 256)),
    ):
        pass


def test_writers_of_one_bundle_take_turns(classify_bundle: Path, tmp_path: Path) -> None:
    """A quantize started while another process writes the bundle waits for it, then works on what
    that one wrote, rather than both copying the old bundle and the last swap losing the other's work."""
    import subprocess
    import sys
    import time

    copy = _copy(classify_bundle, tmp_path)
    command = [sys.executable, "-m", "edgebert", "quantize", str(copy)]
    with locked(copy):  # as bench holds it while it saves its report
        waiting = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        assert waiting.poll() is None
        write_json(copy / "reports" / "mine.json", {})
    _, stderr = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, stderr
    assert "waiting for another edgebert process" in stderr
    assert (copy / "reports" / "mine.json").is_file()


def test_a_bundle_replaced_while_it_is_opened_is_opened_again(
    classify_bundle: Path, embed_bundle: Path, tmp_path: Path
) -> None:
    """A writer renames a new bundle into place (here, over and over, between a classifier and an
    embedding model): every Predictor gets one bundle whole, never one's manifest with the other's
    model files."""
    import os
    import threading
    import time

    from edgebert.runtime import Predictor

    path, other, aside = tmp_path / "bundle", tmp_path / "other", tmp_path / ".aside"
    shutil.copytree(classify_bundle, path)
    shutil.copytree(embed_bundle, other)
    stop = threading.Event()

    def writer() -> None:  # atomic.staging's two renames, and the old copy kept for the next turn
        while not stop.is_set():
            os.replace(path, aside)
            os.replace(other, path)
            os.replace(aside, other)
            time.sleep(0.1)

    swapping = threading.Thread(target=writer)
    swapping.start()
    seen = set()
    try:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            predictor = Predictor(path, precision="fp32")
            result = predictor.predict(["a good film"])[0]
            assert (result.embedding is None) == (predictor.task == "classify")
            seen.add(predictor.task)
    finally:
        stop.set()
        swapping.join()
    assert seen == {"classify", "embed"}


def test_an_unreadable_bundle_is_one_clear_error(classify_bundle: Path, tmp_path: Path) -> None:
    """Files the process may not read (a bundle made by another user, say) are a BundleError, not a
    PermissionError; run as the unprivileged user nobody, since root reads everything."""
    import os
    import subprocess
    import sys

    source = str(Path(__file__).resolve().parents[1])

    def as_nobody(python: str, code: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": source}
        return subprocess.run(
            [python, "-c", code, *args], capture_output=True, text=True, env=env, user=65534
        )

    def imports_edgebert(python: str) -> bool:
        try:
            return as_nobody(python, "import edgebert.bundle").returncode == 0
        except OSError:  # nobody may not run it (it may live in root's home)
            return False

    pythons = [sys.executable, "/usr/bin/python3"]
    python = next((p for p in pythons if os.geteuid() == 0 and imports_edgebert(p)), None)
    if python is None:
        pytest.skip("needs root and a Python the user nobody can run, to read a bundle as nobody")
    copy = _copy(classify_bundle, tmp_path)
    tmp_path.chmod(0o755)
    (copy / MANIFEST).chmod(0o600)
    done = as_nobody(
        python, "import sys; from edgebert.bundle import Bundle; Bundle.load(sys.argv[1])", str(copy)
    )
    assert "BundleError: cannot read bundle" in done.stderr and "Permission denied" in done.stderr, (
        done.stderr
    )
    with pytest.raises(BundleError, match="is a bundle's manifest: pass the bundle's directory"):
        Bundle.load(copy / MANIFEST)


def test_recovery_touches_only_a_writer_s_own_leftovers(classify_bundle: Path, tmp_path: Path) -> None:
    """Another bundle's old copy (``model.v2``'s, beside ``model``) and a user's hidden directory
    that happen to start like ``model``'s leftovers are not ``model``'s to remove or restore."""
    sibling = tmp_path / ".model.v2.0123456789ab.old"  # model.v2's only copy, its writer killed
    shutil.copytree(classify_bundle, sibling)
    users = tmp_path / ".model.before-retrain.old"
    users.mkdir()
    (users / "notes.txt").write_text("precious")
    with pytest.raises(BundleError, match="no bundle at"):
        Bundle.load(tmp_path / "model")
    with staging(tmp_path / "model") as stage:
        write_json(stage / MANIFEST, {"format_version": 1})
    assert (sibling / MANIFEST).is_file() and (users / "notes.txt").read_text() == "precious"
    assert Bundle.load(tmp_path / "model.v2").manifest.task == "classify"  # restored: its own


def test_staging_names_stay_whole_characters_and_paths_are_resolved(tmp_path: Path) -> None:
    long = tmp_path / ("日" * 70)  # 210 bytes: the staging name keeps whole characters and a digest
    with staging(long) as stage:
        stage.name.encode("utf-8")  # no lone surrogate a library could not open
        (stage / "x").write_text("x")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with staging(tmp_path / "link" / "sub" / "..", replace=True) as stage:  # the directory "real"
        assert stage.parent == tmp_path and stage.name.startswith(".real.")
    assert (long / "x").is_file() and (tmp_path / "link").is_symlink()


def test_a_target_made_meanwhile_is_not_replaced_without_consent(tmp_path: Path) -> None:
    refused = pytest.raises(EdgebertError, match="was made while this ran: pass --force")
    with refused, staging(tmp_path / "out") as first:  # a new path: no lock to take yet
        with staging(tmp_path / "out") as second:
            (second / "b").write_text("b")
        (first / "a").write_text("a")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b"]


def test_leftovers_are_found_beside_the_directory_a_link_names(classify_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "bundle").symlink_to(tmp_path / "real" / "bundle")  # dangling: the swap stopped
    shutil.copytree(classify_bundle, tmp_path / "real" / ".bundle.0123456789ab.old")
    assert Bundle.load(tmp_path / "links" / "bundle").manifest.task == "classify"
    assert [p.name for p in (tmp_path / "real").iterdir()] == ["bundle"]
