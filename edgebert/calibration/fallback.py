"""Which FFN-output MatMuls an INT8 model keeps in float: each is ranked by how far from fp32 the
INT8 outputs stay with that one node in float (KL of the logits, or cosine distance), then the most
sensitive are returned to float, the fewest that meet the target: agreement with fp32 on the
calibration texts (distill), accuracy within a budget on a labeled file (``--eval-data``), or a
count (``--keep-float``). BERT's feed-forward outputs carry its largest activation outliers
(Bondarenko et al., 2021), hence these candidates.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgebert.calibration import weight_matmuls
from edgebert.calibration.smoothing import FFN_OUTPUT
from edgebert.data import encode_labels, read_examples
from edgebert.fidelity import divergence, fidelity
from edgebert.runtime.predictor import batch_size_for

if TYPE_CHECKING:
    from edgebert.quantizer import QuantizeConfig
    from edgebert.runtime import Predictor

log = logging.getLogger("edgebert")


def choose_float_nodes(
    fp32: Path,
    build: Callable[[Path, list[str]], None],
    teacher: Predictor,
    texts: list[Any],
    reference: Any,
    config: QuantizeConfig,
) -> dict[str, Any]:
    """Rank the FFN-output MatMuls by how close to fp32 the INT8 outputs come with that one node in
    float (KL of the logits, or cosine distance), then keep the most sensitive in float: the fewest
    that meet the target (accuracy on ``eval_data``, or for distill agreement on ``texts``), or a count.
    An INT8 model that meets distill's agreement target as it is needs no ranking, and gets none."""
    keep = config.keep_float if config.keep_float is not None or config.method == "distill" else 1
    if keep == 0 and config.eval_data is None:
        return {"kept_float": [], "sensitivity": {"divergence_if_kept_float": {}}}
    candidates = [n for n in weight_matmuls(fp32)[0] if FFN_OUTPUT.search(n)] if keep != 0 else []

    def agreement(out: np.ndarray) -> float:
        return fidelity(teacher.task, reference, out)["agreement"]

    with _prober(fp32, build, teacher, texts, config.method) as probe:
        outputs = {"none": probe([])}
        to_target = keep is None and config.eval_data is None
        if not (to_target and agreement(outputs["none"]) >= config.target_agreement):  # else none is fewest
            log.info("measuring the sensitivity of %d FFN-output MatMuls", len(candidates))
            outputs.update({node: probe([node]) for node in candidates})
        scores = {name: divergence(teacher.task, reference, out) for name, out in outputs.items()}
        ranked = sorted((c for c in candidates if c in scores), key=scores.__getitem__)
        found = {"sensitivity": {"divergence_if_kept_float": scores}}
        if config.eval_data is None:
            if keep is not None:
                return {"kept_float": ranked[:keep], **found}
            known = {0: outputs["none"], **({1: outputs[ranked[0]]} if ranked else {})}
            count, tried = _fewest_float(ranked, probe, agreement, config.target_agreement, known)
            met = tried[-1]["figure"] >= config.target_agreement
            log.info("%d MatMul(s) in float: agreement with fp32 %.4f", count, tried[-1]["figure"])
            target = {"target": config.target_agreement, "met": met, "tried": tried}
            return {"kept_float": ranked[:count], "agreement_target": target, **found}
    budget = _accuracy_budget(fp32, build, teacher, ranked, config, config.eval_data)
    return {**budget, **found}


def _fewest_float(
    ranking: list[str],
    probe: Callable[[list[str]], np.ndarray],
    figure: Callable[[np.ndarray], float],
    goal: float,
    known: dict[int, np.ndarray],
) -> tuple[int, list[dict[str, float]]]:
    """Return the most sensitive of ``ranking`` to float one at a time until ``figure`` of the INT8
    outputs reaches ``goal`` (or all are float): the count, and the figure at each count tried.
    ``known``: outputs already measured, by count."""
    tried = []
    for count in range(len(ranking) + 1):
        value = figure(known[count] if count in known else probe(ranking[:count]))
        tried.append({"float": count, "figure": value})
        if value >= goal:
            break
    return count, tried


@contextlib.contextmanager
def _prober(
    fp32: Path, build: Callable[[Path, list[str]], None], teacher: Predictor, texts: list[Any], method: str
) -> Iterator[Callable[[list[str]], np.ndarray]]:
    """A function that builds the INT8 model with the given nodes in float and returns its outputs
    on ``texts``, batched as the Predictor will run it. The probe lives in the staging directory,
    so that a killed export leaves none behind."""
    with tempfile.TemporaryDirectory(prefix=".probe-", dir=fp32.parent) as tmp:
        path = Path(tmp) / "probe.onnx"

        def probe(exclude: list[str]) -> np.ndarray:
            build(path, exclude)
            return teacher.with_model(path).outputs(texts, batch_size=batch_size_for(method))[0]

        yield probe


def _accuracy_budget(
    fp32: Path,
    build: Callable[[Path, list[str]], None],
    teacher: Predictor,
    ranking: list[str],
    config: QuantizeConfig,
    eval_data: str,
) -> dict[str, Any]:
    """The fewest of ``ranking`` in float that hold accuracy on ``eval_data`` within
    ``config.max_drop`` points of fp32's."""
    examples = read_examples(eval_data)
    labels = np.asarray(encode_labels(examples, teacher.labels))

    def accuracy(out: np.ndarray) -> float:
        return float(np.mean(out.argmax(-1) == labels))

    fp32_accuracy = accuracy(teacher.with_model(fp32).outputs(examples.texts)[0])
    goal = fp32_accuracy - config.max_drop / 100 - 1e-9
    with _prober(fp32, build, teacher, examples.texts, config.method) as probe:
        count, tried = _fewest_float(ranking, probe, accuracy, goal, {})
    int8_accuracy = tried[-1]["figure"]
    log.info("%d MatMul(s) in float: accuracy %.4f against fp32's %.4f", count, int8_accuracy, fp32_accuracy)
    return {
        "kept_float": ranking[:count],
        "accuracy_budget": {
            "eval_data": eval_data,
            "fp32_accuracy": fp32_accuracy,
            "int8_accuracy": int8_accuracy,
            "max_drop_points": config.max_drop,
            "met": int8_accuracy >= goal,
            "tried": tried,
        },
    }
