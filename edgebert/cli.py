"""The ``edgebert`` command: parse, call a verb, print. With ``cli_common`` (shared options, the
error path) and ``cli_training`` (train, pretrain, distill), the only place errors become exit codes.

Exit codes: 0 success, 1 an error edgebert explains in one line, 2 a usage error.
People read tables on stdout; ``--json`` prints one JSON object on stdout instead, and progress
and logs go to stderr either way.
"""

from __future__ import annotations

import logging
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click
from rich.logging import RichHandler

from edgebert import __version__
from edgebert.cli_common import (
    BUNDLE,
    DEFAULT_BUNDLE,
    JSON,
    OutputDir,
    calibration_options,
    console,
    errors,
    explained,
    given,
    ints,
    print_json,
    refuse_ignored,
)
from edgebert.cli_training import distill, pretrain, train
from edgebert.tables import bundle_table, predictions_table

DEVICES = ("cpu", "openvino", "gpu", "tensorrt")  # edgebert.runtime.BACKENDS' names, without importing it


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgebert")
@click.option("-q", "--quiet", is_flag=True, help="Only print results and errors.")
def main(quiet: bool) -> None:
    """Make a BERT small and fast enough for the edge, and prove it is still right.

    \b
    Typical flow:
      edgebert export --quantize int8          # default model -> ./bundle (fp32 + int8 ONNX)
      edgebert bench --device cpu              # latency, accuracy, memory, size
      edgebert predict bundle "some text"      # torch-free inference
    """
    if not console.is_terminal:
        console.width = 150  # tables piped to a file or a CI log: do not squeeze them into 80 columns
    handler = RichHandler(console=errors, show_time=False, show_path=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("edgebert").setLevel(logging.WARNING if quiet else logging.INFO)


@main.command()
@click.option(
    "--model", "-m", help="Checkpoint directory (Hugging Face BERT, safetensors). Default: all-MiniLM-L6-v2."
)
@click.option(
    "--task",
    type=click.Choice(["classify", "embed"]),
    help="Default: classify if the checkpoint has a classification head, else embed.",
)
@click.option(
    "--quantize",
    type=click.Choice(["none", "int8", "fp16"]),
    default="none",
    show_default=True,
    help="Also write an INT8 model (per-channel weights; dynamic or static, see --calibration; "
    "with --target openvino NNCF's, or the distill model converted) or an fp16 model for GPUs.",
)
@click.option(
    "--max-length",
    type=click.IntRange(8, 512),
    default=None,
    help="Longest input in tokens; longer texts are truncated. Default: where sentence-transformers "
    "cuts the checkpoint's texts (its max_seq_length: 256 for the default model), else 128.",
)
@click.option(
    "--out",
    "-o",
    type=OutputDir(),
    default=DEFAULT_BUNDLE,
    show_default=True,
    help="Bundle directory to create.",
)
@click.option("--opset", type=click.IntRange(17, 21), default=17, show_default=True, help="ONNX opset.")
@click.option(
    "--fuse",
    is_flag=True,
    help="Run ONNX Runtime's transformer optimizer offline (slower on our CPUs; see README).",
)
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out.")
@calibration_options("dynamic")
@JSON
@explained
def export(out: Path, as_json: bool, **options: Any) -> None:
    """Export a BERT to a validated ONNX bundle (and INT8 with --quantize int8)."""
    from edgebert.exporter import ExportConfig
    from edgebert.exporter import export as run_export

    refuse_ignored(options)
    _show_bundle(run_export(out, ExportConfig(**options)), as_json)


@main.command()
@BUNDLE
@calibration_options("dynamic")
@JSON
@explained
def quantize(bundle: Path, as_json: bool, **options: Any) -> None:
    """Add an INT8 model (dynamic unless --calibration says otherwise) to an existing BUNDLE,
    validated against its fp32 model."""
    _quantize(bundle, as_json, options)


@main.command()
@BUNDLE
@calibration_options("distill")
@JSON
@explained
def calibrate(bundle: Path, as_json: bool, **options: Any) -> None:
    """Calibrate a static INT8 model for BUNDLE on --calibration-data (distill: the FFN outputs'
    inputs smoothed and each activation range chosen by how closely the INT8 outputs follow
    fp32's), replacing any INT8 model it has."""
    if options["calibration"] == "dynamic" and options["target"] != "openvino":
        raise click.BadParameter(
            "dynamic INT8 computes its ranges at run time: nothing to calibrate "
            "(`edgebert quantize` makes it)",
            param_hint="--calibration",
        )
    _quantize(bundle, as_json, options)


def _quantize(bundle: Path, as_json: bool, options: dict[str, Any]) -> None:
    from edgebert.quantizer import QuantizeConfig
    from edgebert.quantizer import quantize as run_quantize

    refuse_ignored(options)
    config = QuantizeConfig(method=options.pop("calibration"), **options)
    _show_bundle(run_quantize(bundle, config), as_json)


@main.command()
@BUNDLE
@click.option(
    "--device",
    "devices",
    default="cpu",
    show_default=True,
    help="Comma-separated targets, measured in one run: cpu (ONNX Runtime CPU), openvino (OpenVINO "
    "CPU: the IR models, each at f32 and at OpenVINO's default precision), gpu (ONNX Runtime "
    "CUDA: fp32, fp16; needs edgebert[gpu] and an NVIDIA GPU), tensorrt (ONNX Runtime's TensorRT "
    "provider, where installed).",
)
@click.option(
    "--data",
    type=click.Path(exists=True, dir_okay=False),
    help="Labeled file for accuracy (TSV/CSV/JSONL); without it agreement is measured on built-in sentences.",
)
@click.option(
    "--batch-size", "batch_sizes", default="1,8", show_default=True, help="Comma-separated batch sizes."
)
@click.option(
    "--seq-len",
    "seq_lens",
    help="Comma-separated sequence lengths (tokens). Default: 128, or the bundle's max_length if shorter.",
)
@click.option(
    "--real-text",
    is_flag=True,
    help="Time the --data texts (or the built-in sentences) one at a time at their own lengths, "
    "tokenization included, instead of synthetic batches: what a device sees.",
)
@click.option(
    "--static-shapes",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="openvino: also run the models compiled for each input shape met, keeping the last N "
    "(faster; costs a compile per new shape and a copy of the weights each).",
)
@click.option("--precision", "precisions", help="Comma-separated models to run (default: all in the bundle).")
@click.option(
    "--threads",
    type=click.IntRange(1),
    help="Intra-op threads (default: each runtime's, one per physical core).",
)
@click.option(
    "--min-runs",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    help="Timed runs per shape, at least.",
)
@click.option(
    "--min-seconds",
    type=click.FloatRange(0),
    default=2.0,
    show_default=True,
    help="Seconds of timing per shape, at least.",
)
@click.option(
    "--max-seconds",
    type=click.FloatRange(0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds of timing per shape, at most: a shape that reaches it first is reported with the "
    "runs it got, and a warning.",
)
@click.option(
    "--warmup", type=click.IntRange(0), default=10, show_default=True, help="Untimed warm-up runs per shape."
)
@click.option(
    "--report",
    "report_dir",
    type=OutputDir(in_reports=True),
    help="Also write report.json, report.csv, report.md and latency-vs-accuracy plots (PNG, Pareto "
    "front marked) into this directory.",
)
@click.option("--no-save", is_flag=True, help="Do not write the report to BUNDLE/reports/.")
@JSON
@explained
def bench(
    bundle: Path,
    devices: str,
    data: str | None,
    batch_sizes: str,
    seq_lens: str | None,
    real_text: bool,
    static_shapes: int,
    precisions: str | None,
    threads: int | None,
    min_runs: int,
    min_seconds: float,
    max_seconds: float,
    warmup: int,
    report_dir: Path | None,
    no_save: bool,
    as_json: bool,
) -> None:
    """Measure latency, throughput, memory, size and accuracy of every model in BUNDLE on each target."""
    from edgebert.atomic import check_writable, locked
    from edgebert.benchmarks import BenchConfig, Timing
    from edgebert.benchmarks import bench as run_bench
    from edgebert.benchmarks.report import render, write_report
    from edgebert.errors import require

    devices_ = tuple(dict.fromkeys(d.strip() for d in devices.split(",")))
    unknown = [d for d in devices_ if d not in DEVICES]
    if unknown:
        choose = f"choose from {', '.join(DEVICES)}"
        raise click.BadParameter(f"{', '.join(unknown)}: {choose}", param_hint="--device")
    for name, option in (("batch_sizes", "--batch-size"), ("seq_lens", "--seq-len")):
        if real_text and given(name):
            raise click.BadParameter(
                "--real-text times one text per call at its own length", param_hint=option
            )
    if static_shapes and "openvino" not in devices_:
        raise click.BadParameter("for --device openvino only", param_hint="--static-shapes")
    if max_seconds < min_seconds:
        raise click.BadParameter(f"below --min-seconds {min_seconds:g}", param_hint="--max-seconds")
    if report_dir is not None:  # checked before the benchmark runs, not after
        require("matplotlib", "report")
        check_writable(report_dir / "report.json")
    config = BenchConfig(
        devices=devices_,
        batch_sizes=ints(batch_sizes, "--batch-size", minimum=1),
        seq_lens=ints(seq_lens, "--seq-len", minimum=2) if seq_lens else None,
        precisions=tuple(dict.fromkeys(p.strip() for p in precisions.split(","))) if precisions else None,
        data=data,
        real_text=real_text,
        static_shapes=static_shapes,
        threads=threads,
        timing=Timing(warmup=warmup, min_runs=min_runs, min_seconds=min_seconds, max_seconds=max_seconds),
        save=not no_save,
    )
    report = run_bench(str(bundle), config)
    if as_json:
        print_json(report)
    else:
        console.print(render(report))
        if "saved_to" in report:
            errors.print(f"report saved to {report['saved_to']}")
    for line in report["skipped"] + report["warnings"]:
        errors.print(f"warning: {line}")
    inside = report_dir is not None and Path(report_dir).resolve().is_relative_to(bundle.resolve())
    if report_dir is not None and not (inside and report.get("bundle_replaced")):  # results shown first
        # under the bundle's reports/, not while another edgebert process replaces the bundle
        with locked(bundle) if inside else nullcontext():
            written = write_report(report, report_dir)
        for path in written:
            errors.print(f"wrote {path}")


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False, path_type=Path))
@click.argument("texts", nargs=-1)
@click.option(
    "--precision",
    help="Model to use (default: the backend's best the bundle has: int8, else fp32; on OpenVINO "
    "openvino-int8, else openvino-fp32, else fp32).",
)
@click.option(
    "--backend",
    type=click.Choice(DEVICES),
    help="Runtime (default: ONNX Runtime CPU, or OpenVINO for an OpenVINO IR --precision).",
)
@click.option(
    "--inference-precision",
    type=click.Choice(["f32", "bf16", "f16"]),
    help="OpenVINO: what the model's float operations compute in (default: the plugin's, bf16 on CPUs "
    "with AVX-512 BF16 or AMX; f32 is the most accurate).",
)
@click.option(
    "--pair",
    is_flag=True,
    help="Sentence pairs: each text 'TEXT<tab>TEXT_PAIR' (a TSV line), or else TEXTS two at a time.",
)
@JSON
@explained
def predict(
    bundle: Path,
    texts: tuple[str, ...],
    precision: str | None,
    backend: str | None,
    inference_precision: str | None,
    pair: bool,
    as_json: bool,
) -> None:
    """Predict TEXTS with BUNDLE (one text per line on stdin when no TEXTS are given)."""
    from edgebert.data import decode, split_lines
    from edgebert.runtime import Predictor

    if not texts:  # one text per line on stdin, decoded and split as data files are
        stdin = decode(sys.stdin.buffer.read(), "stdin")[0].rstrip("\r\n")
        # one answer per line, so a blank line (which has no answer) is refused rather than skipped
        lines = split_lines(stdin)
        blank = next((i for i, line in enumerate(lines) if not line.strip()), None)
        if blank is not None and stdin.strip():
            raise click.BadParameter(
                f"stdin line {blank + 1} is empty: one text a line"
                + (
                    ", a pair a line (a tab between) or two lines a pair"
                    if pair
                    else ", so that answers line up with lines"
                )
            )
        texts = tuple(line for line in lines if line.strip())
        if not texts:
            errors.print("warning: no texts on stdin: nothing to predict")
    items: list[Any] = list(texts)
    if pair and items and all(t.count("\t") == 1 for t in texts):  # as two columns of a TSV file
        items = [tuple(t.split("\t")) for t in texts]
    elif pair:
        if len(items) % 2:
            raise click.BadParameter("--pair needs a tab in every text, or an even number of texts")
        items = list(zip(items[::2], items[1::2], strict=True))
    predictor = Predictor(
        bundle, precision=precision, backend=backend, inference_precision=inference_precision
    )
    results = predictor.predict(items)
    if as_json:
        print_json([{"text": t, **r.to_dict()} for t, r in zip(items, results, strict=True)])
    else:
        console.print(predictions_table(predictor, items, results))
    if any(r.truncated for r in results):  # on stderr: --json's stdout stays parseable
        errors.print(
            f"warning: some texts were longer than {predictor.bundle.manifest.max_length} tokens "
            "and were truncated"
        )


@main.command()
@BUNDLE
@click.option("--threads", type=click.IntRange(1), default=8, show_default=True, help="Concurrent callers.")
@click.option("--seconds", type=click.FloatRange(0.1), default=30.0, show_default=True, help="How long.")
@click.option("--per-thread", is_flag=True, help="One Predictor per thread instead of one shared Predictor.")
@click.option("--precision", help="Model to use (default: int8 if the bundle has one, else fp32).")
@JSON
@explained
def soak(
    bundle: Path, threads: int, seconds: float, per_thread: bool, precision: str | None, as_json: bool
) -> None:
    """Predict from many threads at once and check every answer against the single-threaded one.

    Exits 1 if any request failed or differed.
    """
    from edgebert.benchmarks.soak import SoakConfig
    from edgebert.benchmarks.soak import soak as run_soak

    config = SoakConfig(threads=threads, seconds=seconds, shared=not per_thread, precision=precision)
    result = run_soak(bundle, config)
    if as_json:
        print_json(result)
    else:
        console.print(
            f"{result['requests']} requests from {threads} threads in {seconds:g} s "
            f"({'one shared Predictor' if config.shared else 'one Predictor each'}, {result['precision']}): "
            f"{result['errors']} errors, {result['mismatches']} answers differing from single-threaded; "
            f"RSS {result['rss_start_mb']:.0f} → {result['rss_end_mb']:.0f} MB "
            f"(peak {result['rss_peak_mb']:.0f})"
        )
    if result["errors"] or result["mismatches"]:
        raise click.ClickException(f"soak failed: {result['first_error'] or 'answers differed under load'}")


@main.command()
@BUNDLE
@JSON
@explained
def info(bundle: Path, as_json: bool) -> None:
    """Show what BUNDLE holds, how each model was made and how it was validated (checksums verified)."""
    from edgebert.bundle import Bundle

    _show_bundle(Bundle.load(bundle), as_json)


def _show_bundle(bundle: Any, as_json: bool) -> None:
    if as_json:
        print_json({"path": str(bundle.path), **bundle.manifest.to_dict()})
    else:
        console.print(bundle_table(bundle))


for command in (train, pretrain, distill):
    main.add_command(command)


if __name__ == "__main__":
    main()
