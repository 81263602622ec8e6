"""How closely a derived model's outputs follow its parent's (numpy only)."""

from __future__ import annotations

import numpy as np

from edgebert.errors import ValidationError
from edgebert.runtime.predictor import softmax


def fidelity(task: str, parent: np.ndarray, child: np.ndarray) -> dict[str, float]:
    """Agreement figures of ``child`` outputs against ``parent`` outputs for the same inputs.

    classify: argmax agreement, the largest probability difference, and the largest logit difference;
    embed: mean and minimum cosine similarity. ``agreement`` is the headline figure of either.
    """
    if len(parent) == 0:
        return {"agreement": float("nan"), "n": 0}
    if task == "classify":
        p_parent, p_child = softmax(parent), softmax(child)
        agreement = float(np.mean(parent.argmax(-1) == child.argmax(-1)))
        return {
            "agreement": agreement,
            "max_prob_diff": float(np.abs(p_parent - p_child).max()),
            "max_abs_diff": float(np.abs(parent - child).max()),
            "n": len(parent),
        }
    cosine = np.sum(parent * child, -1) / (
        np.linalg.norm(parent, axis=-1) * np.linalg.norm(child, axis=-1) + 1e-12
    )
    return {
        "agreement": float(cosine.mean()),
        "min_cosine": float(cosine.min()),
        "max_abs_diff": float(np.abs(parent - child).max()),
        "n": len(parent),
    }


def divergence(task: str, parent: np.ndarray, child: np.ndarray) -> float:
    """How far ``child`` is from ``parent``: mean KL divergence of the class probabilities (classify)
    or mean cosine distance of the embeddings (embed). 0 means identical."""
    if task == "classify":
        p_parent, p_child = softmax(parent), softmax(child)
        return float(np.sum(p_parent * (np.log(p_parent + 1e-12) - np.log(p_child + 1e-12)), -1).mean())
    return 1.0 - fidelity(task, parent, child)["agreement"]


def close_outputs(parent: np.ndarray, child: np.ndarray, tolerance: float, differs: str) -> float:
    """The largest absolute difference of ``child`` from ``parent``; a ``ValidationError`` saying
    ``differs`` (what differs from what) when it exceeds ``tolerance`` of the outputs' scale."""
    worst = float(np.abs(parent - child).max())
    if worst > tolerance * max(1.0, float(np.abs(parent).max())):
        raise ValidationError(
            f"{differs} by up to {worst:.2e} (tolerance {tolerance:.0e}): report this model"
        )
    return worst
