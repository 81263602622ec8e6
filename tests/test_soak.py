from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgebert.benchmarks.soak import SoakConfig, soak
from edgebert.cli import main

RSS_BOUND_MB = 64  # growth allowed over a whole soak (threads' first calls allocate buffers)
RSS_BOUND_AFTER_WARMUP_MB = 16  # growth allowed after the first fifth of it


@pytest.mark.parametrize("shared", [True, False])
def test_eight_threads_agree_with_one(classify_bundle: Path, shared: bool) -> None:
    result = soak(classify_bundle, SoakConfig(threads=8, seconds=15, shared=shared))
    assert result["requests"] > 1000
    assert result["errors"] == 0, result["first_error"]
    assert result["mismatches"] == 0
    assert result["rss_growth_mb"] < RSS_BOUND_MB
    assert result["rss_growth_after_first_fifth_mb"] < RSS_BOUND_AFTER_WARMUP_MB


def test_soak_command(embed_bundle: Path) -> None:
    result = CliRunner().invoke(
        main, ["soak", str(embed_bundle), "--threads", "4", "--seconds", "2", "--json"]
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["errors"] == 0
