"""The ``pixseg`` command: argument parsing, logging and progress, errors -> exit codes.

Every subcommand is a thin wrapper over a library function; its options are built from
:mod:`pixseg.options`, so the flags, their help and their checks are those of the Python API
and the YAML config. A user mistake prints one line ``error: ...`` on stderr and exits with 2,
never a traceback; anything else is a bug in pixseg and shows its traceback. Heavy libraries
(dask, zarr) are imported only by the subcommand that runs, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from pixseg.errors import PipelineError
from pixseg.options import (
    ComputeOptions,
    ConvertOptions,
    FitOptions,
    OptionError,
    OutputOptions,
    ReadOptions,
    build_options,
    option_fields,
)
from pixseg.tables import format_label_table, format_model_tables, format_region_table, format_value, print_result

if TYPE_CHECKING:
    from pixseg.labelling import RunResult
    from pixseg.volume_runner import VolumeResult

logger = logging.getLogger("pixseg")

EXIT_USER_ERROR = 2
#: ``pixseg run`` finished, but some images failed (listed in the run summary).
EXIT_BATCH_FAILED = 3
#: Interrupted (SIGINT, or SIGTERM from a batch system at the time limit): 128 + SIGINT.
EXIT_INTERRUPTED = 130
#: How to continue an interrupted command, by subcommand.
_RESUME_HINTS = {
    "segment": "the chunks written so far are kept: rerun with --resume to continue",
    "apply": "the chunks written so far are kept: rerun with --resume to continue",
    "run": "the images and chunks written so far are kept: rerun the same command to continue",
    "convert": "the output is incomplete: rerun with --overwrite",
    "demo": "rerun to start again",
    "relabel": "the output is marked incomplete: rerun pixseg relabel (with any class table) to finish it",
}

#: Titles of the option groups in ``--help``.
_GROUP_TITLES = {
    ReadOptions: "input",
    FitOptions: "fit",
    OutputOptions: "output",
    ComputeOptions: "compute",
    ConvertOptions: "conversion",
}

_EXAMPLES = """examples:
  pixseg demo                                   build a demo slide, segment it, print what to open
  pixseg segment slide.svs labels.zarr -k 5 --mask auto --features hed,texture --save-model m.json
  pixseg apply m.json other.svs other.tif       same model on another slide, pyramidal TIFF out
  pixseg run configs/quick-local.yaml --dry-run  a batch from a config: plan first
  pixseg info labels.zarr                       what an image or output holds

`pixseg COMMAND --help` lists a command's options."""


class UsageError(PipelineError, ValueError):
    """A command-line argument is missing or malformed."""


class _Version(argparse.Action):
    """``--version``: the installed version, looked up only when asked (the lookup is slow for ``--help``)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        import pixseg

        parser.exit(message=f"pixseg {pixseg.__version__}\n")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pixseg`` command line; returns the exit status."""
    parser = _build_parser()
    command = None
    try:
        args = parser.parse_args(argv)
        command = args.command
        _configure_logging(quiet=getattr(args, "quiet", False))
        return int(args.handler(args))
    except PipelineError as err:
        message = " ".join(str(err).split())
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as err:
        cause = f" ({err})" if str(err) else ""  # the SIGTERM handler of console_main names itself
        hint = f"; {_RESUME_HINTS[command]}" if command in _RESUME_HINTS else ""
        print(f"error: interrupted{cause}{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stdout must stay open until exit
        return 0


def console_main() -> NoReturn:
    """The ``pixseg`` console script: :func:`main` in a process that ends with it.

    Only here, in a process pixseg owns, is the process tuned (see :func:`pixseg.cluster.tune_process`)
    and SIGTERM (what SLURM and PBS send at a job's time limit) made to interrupt the run like
    SIGINT: the output's lock is released and the output stays resumable. A library call leaves
    its host process (a notebook) alone.
    """
    from pixseg.cluster import tune_process

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with tune_process():
            status = main()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    sys.exit(status)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """A signal handler that interrupts the main thread as SIGINT does, naming the signal."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


# --- the parser ----------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pixseg",
        description="Out-of-core pixel-clustering segmentation of very large images.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    seg = commands.add_parser("segment", help="fit k-means on a sample of an image and label every pixel")
    seg.add_argument("input", help="TIFF/OME-TIFF/SVS, zarr/OME-Zarr, PNG or JPEG")
    seg.add_argument("output", nargs="?", help="OUTPUT.zarr (OME-Zarr labels) or OUTPUT.tif[f] (pyramidal BigTIFF)")
    seg.add_argument("--save-model", metavar="M.json", help="also save the fitted model as JSON")
    _add_run_arguments(seg, (ReadOptions, FitOptions, OutputOptions, ComputeOptions))
    seg.set_defaults(handler=_run_segment)

    app = commands.add_parser("apply", help="label an image with a saved model")
    app.add_argument("model", help="a model saved by `segment --save-model` or PixelKMeans.save")
    app.add_argument("input")
    app.add_argument("output", nargs="?")
    app.add_argument("--mask", default=None, metavar="auto|none|PATH", help="mask (default: the model's, auto or none)")
    _add_run_arguments(app, (ReadOptions, OutputOptions, ComputeOptions))
    app.set_defaults(handler=_run_apply)

    run = commands.add_parser("run", help="segment a batch of images from a YAML config (see configs/)")
    run.add_argument("config", help="a run configuration (YAML)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted, e.g. compute.workers=4; the value is YAML); repeatable",
    )
    run.add_argument("--dry-run", action="store_true", help="print the plan (images, chunks, memory) and stop")
    add_option_arguments(run, ComputeOptions, help_suffix=" (overrides the config)")
    _add_quiet(run)
    run.set_defaults(handler=_run_batch)

    conv = commands.add_parser("convert", help="write an image as a chunked OME-Zarr (NGFF 0.5) pyramid")
    conv.add_argument("input")
    conv.add_argument("output", help="OUTPUT.zarr")
    add_option_arguments(conv, ConvertOptions)
    conv.add_argument("--overwrite", action="store_true", help="replace an existing output")
    _add_quiet(conv)
    conv.set_defaults(handler=_run_convert)

    info = commands.add_parser("info", help="what an image or a pixseg output holds")
    info.add_argument("path")
    info.add_argument("--level", type=int, default=0, help="pyramid level to describe (default 0)")
    info.add_argument("--volume", action="store_true", help="describe a TIFF or OME-Zarr Z-stack as a volume")
    info.set_defaults(handler=_run_info)

    demo = commands.add_parser("demo", help="build a large demo slide and segment it")
    demo.add_argument("directory", nargs="?", default="pixseg-demo", help="where to put it (default ./pixseg-demo)")
    demo.add_argument("--size", type=int, default=16384, help="edge of the demo image in pixels (default 16384)")
    for cls in (ReadOptions, FitOptions, ComputeOptions):
        add_option_arguments(demo, cls)
    _add_quiet(demo)
    demo.set_defaults(handler=_run_demo)

    view = commands.add_parser("view", help="look at a label output over its slide in a web browser")
    view.add_argument("output", help="a pixseg output: OUTPUT.zarr or OUTPUT.tif")
    view.add_argument("--image", metavar="INPUT", help="the slide under the labels (default: the input recorded)")
    view.add_argument("--port", type=int, default=0, help="port to listen on (default 0: a free one)")
    view.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    view.add_argument("--no-browser", action="store_true", help="print the address without opening a browser")
    view.set_defaults(handler=_run_view)

    export = commands.add_parser("export", help="a label output's regions as GeoJSON polygons (QuPath imports them)")
    export.add_argument("output", help="a pixseg output: OUTPUT.zarr or OUTPUT.tif")
    export.add_argument("--geojson", required=True, metavar="OUT.geojson", help="the GeoJSON file to write")
    export.add_argument(
        "--level", type=int, default=None, help="pyramid level to trace (default: the finest at most 4096 px a side)"
    )
    export.add_argument(
        "--min-area",
        type=float,
        default=None,
        metavar="PX",
        help="leave out regions smaller than PX level-0 pixels (default: 16 pixels of the traced level)",
    )
    export.add_argument("--overwrite", action="store_true", help="replace an existing GeoJSON file")
    _add_quiet(export)
    export.set_defaults(handler=_run_export)

    regions = commands.add_parser("regions", help="areas per label inside GeoJSON regions (QuPath) of an output")
    regions.add_argument("output", help="a pixseg output: OUTPUT.zarr or OUTPUT.tif")
    regions.add_argument("regions", help="REGIONS.geojson: polygons in level-0 pixels")
    _add_quiet(regions)
    regions.set_defaults(handler=_run_regions)

    classes = commands.add_parser("classes", help="name, merge and colour a model's clusters (a new model file)")
    classes.add_argument("model", help="a model file (M.json)")
    classes.add_argument("table", nargs="?", metavar="CLASSES.yaml", help="a class table replacing the model's")
    classes.add_argument("--name", action="append", default=[], metavar="C=NAME", help="name cluster C; repeatable")
    classes.add_argument(
        "--merge", action="append", default=[], metavar="A,B=NAME", help="one class NAME of clusters A,B; repeatable"
    )
    classes.add_argument(
        "--colour", action="append", default=[], metavar="NAME=#rrggbb", help="a class's display colour; repeatable"
    )
    classes.add_argument("-o", "--output", metavar="NEW.json", help="the model file to write")
    classes.add_argument("--in-place", action="store_true", help="replace MODEL itself instead of writing -o")
    classes.add_argument("--overwrite", action="store_true", help="replace an existing -o model file")
    classes.set_defaults(handler=_run_classes)

    relabel = commands.add_parser("relabel", help="rewrite an output's labels for a class table, without predicting")
    relabel.add_argument("output", help="a pixseg output: OUTPUT.zarr")
    relabel.add_argument("classes", metavar="CLASSES", help="a model file with classes, or a class table (YAML)")
    _add_quiet(relabel)
    relabel.set_defaults(handler=_run_relabel)
    return parser


def add_option_arguments(parser: argparse.ArgumentParser, cls: type, *, help_suffix: str = "") -> None:
    """Add every option of ``cls`` that has a CLI flag, as one help group, from its declaration.

    Values are kept as given (strings, or booleans for switches) and checked when the options
    object is made (:func:`options_from_args`); options not given are absent from the namespace.
    """
    group = parser.add_argument_group(_GROUP_TITLES[cls])
    for item, spec, hint in option_fields(cls):
        if spec.flag is None:
            continue
        names = [spec.flag, *([spec.short] if spec.short else [])]
        if hint is bool:
            action = "store_false" if spec.flag.startswith("--no-") else "store_true"
            group.add_argument(*names, dest=item.name, action=action, default=argparse.SUPPRESS, help=spec.help)
            continue
        allowed = spec.choices if isinstance(spec.choices, tuple) else None  # a callable's may import numpy
        described = (
            f"{spec.help}; one of {', '.join(str(a) for a in allowed)}" if allowed and len(allowed) < 8 else spec.help
        )
        if item.default is not None and not isinstance(item.default, bool):
            default = item.default
            shown = (
                ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
                if isinstance(default, tuple)
                else default
            )
            described += f" (default {shown})"
        group.add_argument(
            *names,
            dest=item.name,
            default=argparse.SUPPRESS,
            metavar=spec.metavar or item.name.upper(),
            help=described + help_suffix,
        )


def options_from_args(cls: type, args: argparse.Namespace) -> Any:
    """The ``cls`` options object of the parsed flags; a bad value names its flag.

    Raises
    ------
    UsageError
        For a value of the wrong type, out of range or not among the choices.
    """
    given = vars(args)
    values = {item.name: given[item.name] for item, spec, _ in option_fields(cls) if spec.flag and item.name in given}
    try:
        return build_options(cls, values)
    except OptionError as err:
        flags = {item.name: spec.flag for item, spec, _ in option_fields(cls)}
        raise UsageError(f"{flags.get(err.name.split('[')[0]) or err.name} {err.problem}") from err


def _add_run_arguments(parser: argparse.ArgumentParser, classes: Sequence[type]) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run of the same job (same input, options)"
    )
    parser.add_argument(
        "--into-input",
        metavar="NAME",
        help="write the labels into the OME-Zarr input's labels/NAME group (same as OUTPUT = INPUT/labels/NAME)",
    )
    _add_quiet(parser)
    for cls in classes:
        add_option_arguments(parser, cls)


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log messages")


def _configure_logging(*, quiet: bool) -> None:
    """pixseg's log lines on stderr; library ``warnings.warn`` (dask-ml, scikit-learn) go the same way."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pixseg: %(message)s"))
    logging.captureWarnings(True)
    for name in (logger.name, "py.warnings"):
        target = logging.getLogger(name)
        target.handlers[:] = [handler]
        target.setLevel(logging.ERROR if quiet else logging.INFO)  # -q: errors only
        target.propagate = False


# --- the commands --------------------------------------------------------------------------


def _output_path(args: argparse.Namespace) -> str:
    if args.into_input is None:
        if args.output is None:
            raise UsageError("pixseg: the following arguments are required: output (or --into-input NAME)")
        return str(args.output)
    from pixseg.plan import into_input_path

    return into_input_path(args.input, args.into_input, output=args.output)


def _run_segment(args: argparse.Namespace) -> int:
    from pixseg.dispatch import segment_input

    read, fit, output, compute = (
        options_from_args(cls, args) for cls in (ReadOptions, FitOptions, OutputOptions, ComputeOptions)
    )
    result = segment_input(
        args.input,
        _output_path(args),
        read=read,
        fit=fit,
        output=output,
        model_path=args.save_model,
        **_run_flags(args, compute),
    )
    _print_run(result)
    return 0


def _run_apply(args: argparse.Namespace) -> int:
    from pixseg.dispatch import apply_input

    read, output, compute = (options_from_args(cls, args) for cls in (ReadOptions, OutputOptions, ComputeOptions))
    result = apply_input(
        args.model,
        args.input,
        _output_path(args),
        read=read,
        output=output,
        mask=args.mask,
        **_run_flags(args, compute),
    )
    _print_run(result)
    return 0


def _run_flags(args: argparse.Namespace, compute: ComputeOptions) -> dict[str, Any]:
    """The keyword arguments ``segment`` and ``apply`` take alike: the scheduler (not yet
    started), ``overwrite``, ``resume`` and ``progress``."""
    from pixseg.cluster import open_compute
    from pixseg.runner import WORKER_MODULES

    scheduler = open_compute(compute, worker_imports=WORKER_MODULES)
    return {"scheduler": scheduler, "overwrite": args.overwrite, "resume": args.resume, "progress": not args.quiet}


def _print_run(result: RunResult | VolumeResult) -> None:
    """A 2-D run's tables (:func:`print_result`), or a volume's summary."""
    from pixseg.labelling import RunResult

    if isinstance(result, RunResult):
        print_result(result)
    else:
        print(result.summary())


def _run_batch(args: argparse.Namespace) -> int:
    from pixseg.batch import run_batch
    from pixseg.batch_plan import format_plan, plan_batch
    from pixseg.config import load_config

    compute = options_from_args(ComputeOptions, args)  # checks the flags given, by their flag
    given = vars(args)
    overrides = list(args.overrides)
    for item, spec, _ in option_fields(ComputeOptions):
        if spec.flag and spec.config and item.name in given:
            overrides.append(f"{spec.config}={json.dumps(getattr(compute, item.name))}")
    config = load_config(args.config, overrides)
    if args.dry_run:
        print(format_plan(plan_batch(config)))
        return 0
    result = run_batch(config, progress=not args.quiet)
    print(
        f"{result.count('done')} done, {result.count('skipped')} skipped, {result.count('failed')} failed "
        f"in {result.seconds:.1f} s; summary: {result.summary_path}"
    )
    for outcome in result.failed:
        print(f"failed: {outcome.input}: {outcome.error}", file=sys.stderr)
    return EXIT_BATCH_FAILED if result.failed else 0


def _run_convert(args: argparse.Namespace) -> int:
    from pixseg.convert import convert

    result = convert(
        args.input,
        args.output,
        options=options_from_args(ConvertOptions, args),
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    shapes = ", ".join(f"{y}x{x}" for y, x in result.levels)
    print(
        f"wrote {result.output}: levels {shapes}, chunks {result.chunks[0]}x{result.chunks[1]}, {result.seconds:.1f} s"
    )
    return 0


def _run_info(args: argparse.Namespace) -> int:
    from pixseg.describe import describe
    from pixseg.io.readers.volume import describe_volume, is_volume_input

    if is_volume_input(args.path, volume=args.volume):  # a NIfTI file, a DICOM series, --volume
        description = describe_volume(args.path)
    else:
        description = describe(args.path, level=args.level)
    for key, value in description.items():
        if key in ("model", "statistics", "cluster_counts", "cluster_sums"):  # tables, shown below or in files
            continue
        print(f"{key:>15}: {format_value(key, value)}")
    if description.get("statistics"):
        print(format_label_table(description["statistics"]))
    if isinstance(description.get("model"), dict):
        from pixseg.io.model_file import model_from_document

        if tables := format_model_tables(model_from_document(description["model"], args.path)):
            print(tables)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from pixseg.cluster import open_compute
    from pixseg.demo import demo_fit_options, write_demo_tiff
    from pixseg.runner import WORKER_MODULES, segment

    read, fit, compute = (options_from_args(cls, args) for cls in (ReadOptions, FitOptions, ComputeOptions))
    fit = demo_fit_options(fit, vars(args))
    os.makedirs(args.directory, exist_ok=True)
    source = os.path.join(args.directory, f"demo-slide-{args.size}.tif")
    if not os.path.exists(source):
        logger.info(
            "writing demo slide %s (%dx%d RGB pyramidal TIFF: tissue cut from scikit-image's IHC photo, on glass)",
            source,
            args.size,
            args.size,
        )
        write_demo_tiff(source, size=args.size)
    output = os.path.join(args.directory, "demo-labels.zarr")
    model = os.path.join(args.directory, "demo-model.json")
    with open_compute(compute, worker_imports=WORKER_MODULES):
        result = segment(source, output, read=read, fit=fit, model_path=model, overwrite=True, progress=not args.quiet)
    print_result(result)
    print(f"input: {source}\nmodel: {model}\nview it: pixseg view {output}")
    return 0


def _run_view(args: argparse.Namespace) -> int:
    from pixseg.view import make_server, serve

    server = make_server(args.output, image=args.image, host=args.host, port=args.port)
    print(f"viewing {args.output} at {server.url} (Ctrl-C stops)", flush=True)
    serve(server, open_browser=not args.no_browser)
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from pixseg.export import export_geojson

    result = export_geojson(
        args.output, args.geojson, level=args.level, min_area=args.min_area, overwrite=args.overwrite
    )
    height, width = result.shape
    print(
        f"wrote {result.path}: {result.n_features} regions of at least {result.min_area:g} px, "
        f"traced at level {result.level} ({height}x{width}, coordinates in level-0 pixels)"
    )
    return 0


def _run_classes(args: argparse.Namespace) -> int:
    from pixseg.classes import parse_edits
    from pixseg.relabel import name_classes
    from pixseg.tables import format_class_table

    if args.in_place and args.output is not None:
        raise UsageError("pixseg classes: give -o NEW.json or --in-place, not both")
    model, written = name_classes(
        args.model,
        edits=parse_edits(args.name, args.merge, args.colour),
        table_path=args.table,
        output=args.output,
        in_place=args.in_place,
        overwrite=args.overwrite,
    )
    print(format_class_table(model))
    if written is not None:
        print(f"wrote {written}")
    return 0


def _run_relabel(args: argparse.Namespace) -> int:
    from pixseg.relabel import relabel

    result = relabel(args.output, args.classes, progress=not args.quiet)
    print(f"relabelled {result.output} into {len(result.statistics)} classes in {result.seconds:.1f} s")
    print(format_label_table(result.statistics))
    if result.side_files:
        print("side files: " + ", ".join(result.side_files))
    return 0


def _run_regions(args: argparse.Namespace) -> int:
    from pixseg.regions import measure_output

    result = measure_output(args.output, args.regions, progress=not args.quiet)
    print(format_region_table(result.rows))
    print("side files: " + ", ".join(result.side_files))
    return 0


if __name__ == "__main__":  # pragma: no cover
    console_main()
