"""Property-based tests: whatever text and batch shapes arrive, the Predictor answers or raises one
of edgebert's documented errors, and a text's answer does not depend on its batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgebert.errors import InputError, TextTypeError
from edgebert.runtime import Predictor

# every code point, lone surrogates and control characters included
TEXT = st.text(st.characters(exclude_categories=()), max_size=400)
ITEM = st.one_of(TEXT, st.tuples(TEXT, TEXT))
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def int8(classify_bundle: Path) -> Predictor:
    return Predictor(classify_bundle)


@pytest.fixture(scope="module")
def fp32(embed_bundle: Path) -> Predictor:
    return Predictor(embed_bundle, precision="fp32")


@SETTINGS
@given(texts=st.lists(ITEM, max_size=8))
def test_any_text_gets_an_answer_or_a_documented_error(int8: Predictor, texts: list) -> None:
    try:
        results = int8.predict(texts)
    except InputError as exc:
        assert "is empty" in str(exc) or "has no tokens" in str(exc)  # nothing to read is the one refusal
        return
    assert len(results) == len(texts)
    for text, result in zip(texts, results, strict=True):
        assert result == int8.predict([text])[0]  # alone or in a batch: the same answer
        assert result.score is not None and 0.0 <= result.score <= 1.0


@SETTINGS
@given(texts=st.lists(TEXT.filter(str.strip), min_size=1, max_size=8))
def test_padding_never_changes_an_fp32_answer(fp32: Predictor, texts: list[str]) -> None:
    try:
        together, _ = fp32.outputs(texts)
    except InputError as exc:  # a text the tokenizer keeps nothing of: refused, as tested above
        assert "has no tokens" in str(exc)
        return
    alone = np.stack([fp32.outputs([t])[0][0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)  # the stated tolerance


@SETTINGS
@given(
    items=st.lists(
        st.one_of(TEXT, st.none(), st.integers(), st.binary(), st.floats()), min_size=1, max_size=6
    )
)
def test_non_text_is_a_type_error_naming_the_position(int8: Predictor, items: list) -> None:
    bad = next((i for i, x in enumerate(items) if not isinstance(x, str)), None)
    try:
        int8.predict(items)
    except TextTypeError as exc:
        assert bad is not None and f"item {bad} is" in str(exc)
        assert isinstance(exc, TypeError)
    except InputError as exc:
        assert "is empty" in str(exc) or "has no tokens" in str(exc)
    else:
        assert bad is None
