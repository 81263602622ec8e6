"""What the ``edgebert`` commands share: the consoles, the one error path, common options."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from edgebert.errors import EdgebertError, SettingsError

# no console markup: what edgebert prints holds users' texts, labels and paths, which may hold brackets
console = Console(markup=False)
errors = Console(stderr=True, markup=False)
DEFAULT_BUNDLE = "bundle"


INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (128 + SIGINT)


def explained(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn edgebert's errors into one line and exit code 1 (2 for settings no run can use, as
    click's own usage errors); Ctrl-C into "interrupted" and exit code 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except SettingsError as exc:
            raise click.UsageError(str(exc)) from exc
        except EdgebertError as exc:
            raise click.ClickException(str(exc)) from exc
        except KeyboardInterrupt:  # what was being written is already gone (edgebert.atomic)
            errors.print("interrupted")
            raise click.exceptions.Exit(INTERRUPTED) from None

    return wrapper


class OutputDir(click.Path):
    """A directory a command writes: refused before any work when a file stands in its way, or when
    it is inside a bundle (which holds only what its manifest lists, and ``reports/``: ``in_reports``
    allows a directory there)."""

    def __init__(self, *, in_reports: bool = False) -> None:
        super().__init__(file_okay=False, path_type=Path)
        self.in_reports = in_reports

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from edgebert.bundle import MANIFEST, REPORTS

        path = super().convert(value, param, ctx)
        absolute = Path(os.fsdecode(path)).absolute()
        blocked = next((p for p in absolute.parents if p.exists() and not p.is_dir()), None)
        if blocked is not None:
            self.fail(f"'{blocked}' is a file: no directory can be made inside it", param, ctx)
        real = Path(os.path.realpath(absolute))  # through links and ".."
        # a bundle above it, or (for a report, which would land in it) the directory itself
        above = [real, *real.parents] if self.in_reports else list(real.parents)
        bundle = next((p for p in above if (p / MANIFEST).is_file()), None)
        if bundle is not None and not (self.in_reports and real.is_relative_to(bundle / REPORTS)):
            where = f"under '{bundle / REPORTS}' or outside it" if self.in_reports else "outside it"
            self.fail(f"'{absolute}' is in bundle '{bundle}': write {where}", param, ctx)
        return path


def ints(text: str, option: str, minimum: int) -> tuple[int, ...]:
    """``option``'s comma-separated integers, each at least ``minimum``; each once, in order."""
    try:
        values = tuple(dict.fromkeys(int(v) for v in text.split(",")))
    except ValueError:
        raise click.BadParameter(
            f"'{text}' is not a comma-separated list of integers (e.g. 1,8)", param_hint=option
        ) from None
    if min(values) < minimum:
        raise click.BadParameter(f"'{text}': each value must be at least {minimum}", param_hint=option)
    return values


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


BUNDLE = click.argument("bundle", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_BUNDLE)
JSON = click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON on stdout instead of a table."
)
CALIBRATION_DATA = click.option(
    "--calibration-data",
    type=click.Path(exists=True, dir_okay=False),
    help="Text file (labels ignored) that INT8 is calibrated on: activation ranges, and which layers "
    "stay in float. Default: the built-in sentences. Never your evaluation file.",
)

TARGET = [
    click.option(
        "--target",
        type=click.Choice(["onnx", "openvino"]),
        default="onnx",
        show_default=True,
        help="onnx: ONNX Runtime INT8 (model.int8.onnx); openvino: the OpenVINO IR (.xml + .bin) of "
        "the validated ONNX model and, with INT8, NNCF's INT8 model calibrated on the same text "
        "(--calibration distill: edgebert's distill INT8 model, made first if the bundle has none "
        "calibrated on that text, converted to OpenVINO).",
    ),
    click.option(
        "--fp16-weights", is_flag=True, help="openvino: store the IR's weights in fp16 (default fp32)."
    ),
]


PRECISION = click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
    help="Training precision: auto is bf16 (or fp16) mixed precision on a GPU, fp32 on a CPU.",
)


def calibration_options(default: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Where the model goes (``--target``) and how INT8 is calibrated: ``--calibration``
    (``default``), its data, and the target that decides which layers stay in float."""
    options = [
        *TARGET,
        click.option(
            "--calibration",
            type=click.Choice(["dynamic", "minmax", "percentile", "entropy", "distill"]),
            default=default,
            show_default=True,
            help="dynamic: activation ranges computed at run time; minmax/percentile/entropy: static "
            "QDQ INT8 with ranges measured on --calibration-data; distill: static, the FFN outputs' "
            "inputs smoothed (SmoothQuant, in the layers where it helps) and each range chosen from "
            "those three by how closely the INT8 outputs follow fp32's.",
        ),
        CALIBRATION_DATA,
        click.option(
            "--calibration-samples",
            type=click.IntRange(1),
            default=1024,
            show_default=True,
            help="Texts drawn (seed 0) from --calibration-data.",
        ),
        click.option(
            "--target-agreement",
            type=click.FloatRange(0, 1),
            default=0.99,
            show_default=True,
            help="distill: keep the fewest sensitive layers in float that bring INT8's argmax "
            "agreement with fp32 on the calibration texts to this (mean cosine for embedding "
            "models); the other methods keep the most sensitive one.",
        ),
        click.option(
            "--eval-data",
            type=click.Path(exists=True, dir_okay=False),
            help="Labeled held-out file: keep the fewest sensitive layers in float that hold accuracy "
            "within --max-drop points of fp32 (never the calibration file).",
        ),
        click.option(
            "--max-drop",
            type=click.FloatRange(0),
            default=0.5,
            show_default=True,
            help="Accuracy points INT8 may lose on --eval-data.",
        ),
    ]

    return lambda command: _stack(options, command)


INT8_ONLY = (
    "calibration",
    "calibration_data",
    "calibration_samples",
    "target_agreement",
    "eval_data",
    "max_drop",
)


def given(name: str) -> bool:
    """Whether the command line (or the environment) set option ``name``, rather than its default."""
    source = click.get_current_context().get_parameter_source(name)
    return source is not None and source != click.core.ParameterSource.DEFAULT


def refuse_ignored(options: dict[str, Any]) -> None:
    """A usage error for options given that this run would not use, rather than silence."""
    if options.get("quantize", "int8") != "int8":
        ignored = [f"--{name.replace('_', '-')}" for name in INT8_ONLY if given(name)]
        if ignored:
            raise click.UsageError(f"{', '.join(ignored)}: INT8 options, for --quantize int8 only")
    if options.get("fp16_weights") and options.get("target") != "openvino":
        raise click.UsageError("--fp16-weights: for --target openvino only")
    method = options.get("calibration")
    if given("target_agreement") and method != "distill":
        others = (
            "NNCF's OpenVINO model takes none"
            if options.get("target") == "openvino"
            else "the other methods keep the most sensitive layer in float; --eval-data with --max-drop "
            "gives any method an accuracy budget"
        )
        raise click.UsageError(f"--target-agreement: for --calibration distill only ({others})")
    if given("max_drop") and not options.get("eval_data"):
        raise click.UsageError("--max-drop: the accuracy budget on --eval-data, which is not given")
    if options.get("target") == "openvino" and method == "dynamic" and given("eval_data"):
        raise click.UsageError(
            "--eval-data: NNCF's INT8 model (--target openvino without --calibration distill) takes "
            "no accuracy budget; --calibration distill does"
        )


def schedule_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every supervised training command shares (``training.finetune.Schedule``)."""
    path = click.Path(exists=True, dir_okay=False)
    options = [
        click.option("--data", required=True, type=path, help="Labeled training file."),
        click.option(
            "--eval", "eval_data", required=True, type=path, help="Labeled dev file, evaluated each epoch."
        ),
        click.option("--epochs", type=click.IntRange(1), default=1, show_default=True),
        click.option(
            "--max-steps", type=click.IntRange(1), help="Stop after this many optimizer steps (short runs)."
        ),
        click.option("--max-length", type=click.IntRange(8, 512), default=64, show_default=True),
        click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True),
        click.option("--lr", type=click.FloatRange(0, min_open=True), default=5e-5, show_default=True),
        click.option(
            "--patience",
            type=click.IntRange(1),
            help="Early stopping: stop after this many epochs without a better dev accuracy.",
        ),
        PRECISION,
        click.option(
            "--save-every",
            type=click.IntRange(1),
            default=500,
            show_default=True,
            help="Steps between resumable saves to OUT.resume/ (also saved each epoch).",
        ),
        click.option(
            "--resume", is_flag=True, help="Continue the interrupted run whose state is in OUT.resume/."
        ),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option(
            "--force", is_flag=True, help="Replace an existing checkpoint at --out (and any OUT.resume/)."
        ),
    ]
    return _stack(options, command)


def _stack(options: list[Callable[..., Any]], command: Callable[..., Any]) -> Callable[..., Any]:
    """Apply click options to ``command`` so that --help lists them in the given order."""
    for option in reversed(options):
        command = option(command)
    return command
