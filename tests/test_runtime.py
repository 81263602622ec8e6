from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_torch_free, embeddings, requires_no_cuda_provider
from edgebert.errors import InputError
from edgebert.runtime import Predictor
from edgebert.samples import SENTENCES


def test_classify_predictions(classify_bundle: Path) -> None:
    predictor = Predictor(classify_bundle)
    assert predictor.precision == "int8"
    results = predictor.predict(["a wonderful film", ("the plot", "was dull")])
    assert [r.label in ("negative", "positive") for r in results] == [True, True]
    for r in results:
        assert r.score == pytest.approx(max(r.scores.values()))
        assert sum(r.scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert not r.truncated


def test_batch_padding_does_not_change_answers(embed_bundle: Path) -> None:
    predictor = Predictor(embed_bundle, precision="fp32")
    together, _ = predictor.outputs(list(SENTENCES))
    alone = np.stack([predictor.outputs([s])[0][0] for s in SENTENCES])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_int8_answers_do_not_depend_on_the_batch(classify_bundle: Path) -> None:
    predictor = Predictor(classify_bundle)  # dynamic INT8: one text per call
    assert predictor.batch_size == 1
    together = predictor.predict(list(SENTENCES))
    alone = [predictor.predict([s])[0] for s in SENTENCES]
    assert together == alone


def test_pads_to_longest_not_max_length(embed_bundle: Path) -> None:
    predictor = Predictor(embed_bundle)
    feeds, truncated = predictor.encode(["short one", "a slightly longer sentence here"])
    assert feeds["input_ids"].shape[1] < predictor.bundle.manifest.max_length
    assert truncated == [False, False]


def test_long_text_is_truncated_and_flagged(embed_bundle: Path) -> None:
    [result] = Predictor(embed_bundle).predict(["word " * 5000])
    assert result.truncated
    assert result.embedding is not None and np.isfinite(result.embedding).all()
    # padding to a multiple of tokens stops at max_length (64), past which a model may have no positions
    padded = Predictor(embed_bundle, pad_to_multiple_of=48)
    assert padded.encode(["word " * 5000, "word"])[0]["input_ids"].shape == (2, 64)
    assert np.allclose(embeddings(padded.predict(["word " * 5000])), result.embedding, atol=1e-5)


def test_odd_but_valid_text(classify_bundle: Path) -> None:
    odd = ["x" * 500, "emoji 🤖 and 日本語 mixed", "control\x00\x07chars", "lone \ud800 surrogate"]
    assert len(Predictor(classify_bundle).predict(odd)) == 4


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (["fine", None], "item 1 is NoneType"),
        (["ok", 3], "item 1 is int"),
        (["ok", "  "], "text 1 is empty"),
        ("", "text 0 is empty"),
    ],
)
def test_bad_input_names_the_position(classify_bundle: Path, texts: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Predictor(classify_bundle).predict(texts)  # type: ignore[arg-type]


def test_empty_batch(classify_bundle: Path, embed_bundle: Path) -> None:
    assert Predictor(classify_bundle).predict([]) == []
    embedder = Predictor(embed_bundle)  # no rows, the columns of an answer: they stack with others
    assert embedder.outputs([])[0].shape == (0, embedder.outputs(["a text"])[0].shape[1])


def test_runtime_never_imports_torch(classify_bundle: Path) -> None:
    assert_torch_free(
        "from edgebert.runtime import Predictor; import edgebert.benchmarks; "
        f"Predictor({str(classify_bundle)!r}).predict(['hello'])"
    )


def test_the_base_install_is_enough_to_predict(classify_bundle: Path, embed_bundle: Path) -> None:
    """With none of the packages that only edgebert's extras bring (the command line's click, rich
    and psutil, torch, onnx, openvino...), the runtime loads bundles and predicts, and the
    ``edgebert`` command says what to install for it."""
    import re

    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]

    def module(requirement: str) -> str:
        return re.split(r"[\[<>=~! ]", requirement)[0].replace("-", "_").lower()

    base = {module(r) for r in project["dependencies"]}
    assert base == {"onnxruntime", "tokenizers", "numpy"}
    extras = {module(r) for rs in project["optional-dependencies"].values() for r in rs}
    absent = sorted(extras - base - {"edgebert"})
    assert {"click", "rich", "psutil", "torch", "onnx", "openvino"} <= set(absent)
    without = (
        "import sys\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.partition('.')[0] in {absent!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Absent())\n"
    )
    for bundle in (classify_bundle, embed_bundle):
        code = without + f"import edgebert; print(len(edgebert.load({str(bundle)!r}).predict(['hello'])))"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert (done.returncode, done.stdout.strip()) == (0, "1"), done.stderr
    code = without + "from edgebert.__main__ import main; main()"
    done = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and not done.stdout, done.stderr
    assert done.stderr.strip() == (
        "Error: edgebert's command line needs the Python package 'click': install edgebert's 'cli' extra "
        "(pip install '.[cli]' in edgebert's source directory)"
    )


def test_import_edgebert_is_light() -> None:
    code = (
        "import sys, edgebert, edgebert.cli; "
        "print(sorted(m for m in ('torch', 'transformers', 'onnxruntime') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_the_public_verbs_resolve_and_are_listed(classify_bundle: Path) -> None:
    import edgebert

    assert dir(edgebert) == sorted(edgebert.__all__) and "load" in edgebert.__all__
    assert all(callable(getattr(edgebert, name)) for name in edgebert.__all__ if name != "__version__")
    with pytest.raises(AttributeError, match="no attribute 'no_such_verb'"):
        edgebert.no_such_verb  # noqa: B018
    # the runtime's verb stays torch-free
    assert_torch_free(f"import edgebert; edgebert.load({str(classify_bundle)!r}).predict(['hello'])")


def test_cpu_sessions_run_without_the_skip_layer_norm_fusion(classify_bundle: Path, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from edgebert.runtime.backends import CPU_DISABLED_OPTIMIZERS

    def fused_ops(disabled: tuple[str, ...]) -> set[str]:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        ort.InferenceSession(
            str(classify_bundle / "model.int8.onnx"), options, disabled_optimizers=list(disabled)
        )
        optimized = onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False)
        return {node.op_type for node in optimized.graph.node}

    assert "SkipLayerNormalization" in fused_ops(())  # the name below is the fusion this ONNX Runtime runs
    assert "SkipLayerNormalization" not in fused_ops(CPU_DISABLED_OPTIMIZERS)


def test_a_gpu_session_that_falls_back_to_the_cpu_is_an_error(
    classify_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # ONNX Runtime opens the session on the CPU, with at most a warning, when the provider asked for
    # cannot start: here it is not in this build; on a GPU build, no GPU or no CUDA libraries (and
    # what onnxruntime.preload_dlls prints about those goes into the error, not onto stdout)
    import warnings

    from edgebert.runtime.backends import BACKENDS, BackendError, SessionOptions

    requires_no_cuda_provider()
    for device, provider in (("gpu", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        with warnings.catch_warnings(), pytest.raises(BackendError) as raised:
            warnings.simplefilter("ignore")
            BACKENDS[device].open(classify_bundle / "model.onnx", SessionOptions())
        assert f"could not start {provider} here and fell back to CPUExecutionProvider" in str(raised.value)
    assert capsys.readouterr().out == ""


def test_int8_products_are_exact_on_every_cpu() -> None:
    # u8 255 times s8 127 in every position: where ONNX Runtime's default kernels add neighbouring
    # products in saturating 16 bits (x86 without VNNI) each pair gives 32,767 instead of 64,770
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgebert.runtime.backends import open_session, u8s8_saturates

    inner = 64
    weights = np.full((inner, 16), 127, np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])],
        "products",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [4, inner])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [4, 16])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    feeds = {"a": np.full((4, inner), 255, np.uint8)}
    exact = feeds["a"].astype(np.int64) @ weights.astype(np.int64)

    plain = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert u8s8_saturates() == (not np.array_equal(plain, exact))  # the CPU check matches the kernels
    np.testing.assert_array_equal(open_session(model, "cpu").run(None, feeds)[0], exact)


def test_bad_arguments_are_input_errors(classify_bundle: Path) -> None:
    for kwargs in ({"threads": "2"}, {"pad_to_multiple_of": -8}, {"static_shapes": -1}):
        with pytest.raises(InputError, match="whole number"):
            Predictor(classify_bundle, **kwargs)
    with pytest.raises(InputError, match="bundle directory"):
        Predictor(None)  # type: ignore[arg-type]
    predictor = Predictor(classify_bundle)
    for batch_size in (-1, 0, 2.5, "8"):
        with pytest.raises(InputError, match="batch_size"):
            predictor.predict(["a good film"], batch_size=batch_size)  # type: ignore[arg-type]


def test_openvino_options_elsewhere_and_odd_containers_are_refused(classify_bundle: Path) -> None:
    from edgebert.errors import TextTypeError

    for kwargs in ({"inference_precision": "bf16"}, {"static_shapes": 4}):
        with pytest.raises(InputError, match="OpenVINO's options, not for backend 'cpu'"):
            Predictor(classify_bundle, **kwargs)
    with pytest.raises(InputError, match=r"threads must be a whole number 1\.\.1024"):
        Predictor(classify_bundle, threads=2**40)
    with pytest.raises(TextTypeError, match="a list of strings"):
        Predictor(classify_bundle).predict({"a good film": 1})
    with pytest.raises(TextTypeError, match="a list of strings"):
        Predictor(classify_bundle).predict(np.array("a good film"))
    with pytest.raises(TextTypeError, match=r"one sentence pair or two texts: pass \[\(text, text_pair\)\]"):
        Predictor(classify_bundle).predict(("is it good?", "it is good"))


def test_a_checkpoint_s_own_special_tokens_stay_tokens(classify_bundle: Path, tmp_path: Path) -> None:
    from tokenizers import AddedToken, Tokenizer

    from edgebert.runtime.predictor import load_tokenizer

    tokenizer = Tokenizer.from_file(str(classify_bundle / "tokenizer.json"))
    tokenizer.add_special_tokens([AddedToken("[E1]", special=True)])  # an entity marker
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    marker = tokenizer.token_to_id("[E1]")
    loaded = load_tokenizer(tmp_path / "tokenizer.json", 32)
    assert loaded.encode("paris [E1] france").ids.count(marker) == 1  # as the model was trained


def test_embeddings_are_their_own_read_only_arrays(embed_bundle: Path) -> None:
    first, second = Predictor(embed_bundle).predict(["a good film", "a bad film"])
    assert len(repr(first)) < 120 and f"<{first.embedding.size} floats: " in repr(first)  # type: ignore[union-attr]
    assert first.embedding is not None and first.embedding.base is None
    assert not first.embedding.flags.writeable
    assert first == Predictor(embed_bundle).predict(["a good film"])[0] and first != second


def test_a_relative_bundle_path_survives_a_change_of_directory(
    classify_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(classify_bundle.parent)
    predictor = Predictor(classify_bundle.name)
    monkeypatch.chdir("/")
    predictor.bundle.verify(predictor.precision)  # what the first large call does
    assert predictor.predict(["a good film"])[0].label is not None


def test_a_huge_text_is_cut_before_it_is_tokenized(classify_bundle: Path) -> None:
    """What lies past the bundle's max_length would be truncated anyway: a megabyte text is cut at
    MAX_CHARS_PER_TOKEN characters a token first, and gets the answer that cut text gets."""
    from edgebert.runtime.predictor import MAX_CHARS_PER_TOKEN

    predictor = Predictor(classify_bundle)
    limit = predictor.bundle.manifest.max_length * MAX_CHARS_PER_TOKEN
    huge = "a good film " * 100_000
    whole, cut = predictor.predict([huge, huge[:limit]])
    assert whole.truncated and whole == cut
    short = predictor.predict(["a good film"])[0]
    assert not short.truncated


def test_sessions_without_spinning(classify_bundle: Path) -> None:
    quiet = Predictor(classify_bundle, precision="fp32", spinning=False)
    entry = "session.intra_op.allow_spinning"
    assert quiet.session.get_session_options().get_session_config_entry(entry) == "0"
    assert quiet.predict(["a good film"]) == Predictor(classify_bundle, precision="fp32").predict(
        ["a good film"]
    )


def test_the_fast_tokenizer_call_gives_what_the_full_one_gives(classify_bundle: Path) -> None:
    # the Predictor tokenizes without the characters' offsets (encode_batch_fast) where it can
    predictor = Predictor(classify_bundle)
    pair = (SENTENCES[0], SENTENCES[1])
    texts: list[str | tuple[str, str]] = [*SENTENCES[:4], pair, " ".join(SENTENCES)]  # the last too long
    fast = predictor.encode(texts)
    predictor._encode_batch = predictor.tokenizer.encode_batch
    full = predictor.encode(texts)
    assert fast[1] == full[1] and any(fast[1])
    assert fast[0].keys() == full[0].keys()
    for name, values in fast[0].items():
        np.testing.assert_array_equal(values, full[0][name])
