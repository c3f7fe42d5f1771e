"""The ``pixseg`` command: argument parsing, logging and progress, errors -> exit codes.

Every subcommand is a thin wrapper over a library function. A user mistake prints one line
``error: ...`` on stderr and exits with 2, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from pixseg import __version__
from pixseg.cluster import open_scheduler
from pixseg.errors import PipelineError
from pixseg.features import FEATURE_GROUPS
from pixseg.runner import (
    NORMALISE_MODES,
    FitOptions,
    OutputOptions,
    ReadOptions,
    RunResult,
    apply,
    convert,
    describe,
    segment,
)

logger = logging.getLogger("pixseg")

EXIT_USER_ERROR = 2
#: ``pixseg run`` finished, but some images failed (listed in the run summary).
EXIT_BATCH_FAILED = 3


class UsageError(PipelineError, ValueError):
    """A command-line argument is missing or malformed."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pixseg`` command line; returns the exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        _configure_logging(quiet=getattr(args, "quiet", False))
        return int(args.handler(args))
    except PipelineError as err:
        message = " ".join(str(err).split())
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stdout must stay open until exit
        return 0


def console_main() -> NoReturn:
    """The ``pixseg`` console script: :func:`main` in a process that ends with it.

    The imported libraries' objects (about 250,000: dask, zarr, scikit-learn, pandas) live until
    the process exits. Freezing them out of the cyclic garbage collector (``gc.freeze``) before
    the run, and everything left after it, spares each full collection during the run and the
    interpreter's last one at exit from traversing them: about 1 s of a 10 s run at 4096^2.
    """
    gc.freeze()
    status = main()
    gc.freeze()
    sys.exit(status)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pixseg", description="Out-of-core pixel-clustering segmentation of very large images.")
    parser.add_argument("--version", action="version", version=f"pixseg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    seg = commands.add_parser("segment", help="fit k-means on a sample of an image and label every pixel")
    seg.add_argument("input", help="TIFF/OME-TIFF/SVS, zarr/OME-Zarr, PNG or JPEG")
    seg.add_argument("output", nargs="?", help="OUTPUT.zarr (OME-Zarr labels) or OUTPUT.tif[f] (pyramidal BigTIFF)")
    _add_fit_arguments(seg)
    seg.add_argument("--save-model", metavar="M.json", help="also save the fitted model as JSON")
    _add_run_arguments(seg)
    seg.set_defaults(handler=_run_segment)

    app = commands.add_parser("apply", help="label an image with a saved model")
    app.add_argument("model", help="a model saved by `segment --save-model`")
    app.add_argument("input")
    app.add_argument("output", nargs="?")
    app.add_argument("--mask", default=None, metavar="auto|none|PATH", help="mask (default: the model's, auto or none)")
    _add_run_arguments(app)
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
    run.add_argument("--scheduler", help="override compute.scheduler: threads, local, slurm, pbs or tcp://HOST:PORT")
    run.add_argument("--workers", type=int, help="override compute.workers (threads, processes or batch jobs)")
    run.add_argument("--lifetime", help="override compute.lifetime: workers retire and are replaced after it (55m)")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log messages")
    run.set_defaults(handler=_run_batch)

    conv = commands.add_parser("convert", help="write an image as a chunked OME-Zarr (NGFF 0.5) pyramid")
    conv.add_argument("input")
    conv.add_argument("output", help="OUTPUT.zarr")
    conv.add_argument("--level", type=int, default=0, help="input pyramid level to convert (default 0)")
    conv.add_argument("--chunk", type=int, default=1024, help="zarr chunk edge in pixels (default %(default)s)")
    conv.add_argument("--levels", default="auto", help="pyramid levels: auto (down to <= 1024 px) or a number")
    conv.add_argument("--codec", default="zstd", help="zstd (default), lz4, zlib or none (all lossless)")
    conv.add_argument("--shard", type=int, default=None, metavar="N", help="zarr v3 shards of N x N chunks")
    conv.add_argument("--overwrite", action="store_true", help="replace an existing output")
    conv.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log messages")
    conv.set_defaults(handler=_run_convert)

    info = commands.add_parser("info", help="what an image or a pixseg output holds")
    info.add_argument("path")
    info.add_argument("--level", type=int, default=0, help="pyramid level to describe")
    info.set_defaults(handler=_run_info)

    demo = commands.add_parser("demo", help="build a large demo slide and segment it")
    demo.add_argument("directory", nargs="?", default="pixseg-demo", help="where to put it (default ./pixseg-demo)")
    demo.add_argument("--size", type=int, default=16384, help="edge of the demo image in pixels (default 16384)")
    _add_fit_arguments(demo)
    _add_run_arguments(demo, with_output_flags=False)
    demo.set_defaults(handler=_run_demo)
    return parser


def _add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = FitOptions()
    parser.add_argument("--clusters", "-k", type=int, default=defaults.clusters, help="K (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default %(default)s)")
    parser.add_argument(
        "--features",
        default=",".join(defaults.features),
        help=f"comma-separated features from {', '.join(FEATURE_GROUPS)}; texture = smooth,std,gradient,log "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--sample-size", type=int, default=defaults.sample_size, help="pixels sampled for the fit (default %(default)s)"
    )
    parser.add_argument(
        "--restarts",
        type=int,
        default=defaults.restarts,
        help="k-means|| runs per fit, the lowest sample inertia wins; about 1 s each (default %(default)s)",
    )
    parser.add_argument(
        "--sigmas",
        type=_parse_sigmas,
        default=defaults.sigmas,
        metavar="S1,S2",
        help=f"texture scales in full-resolution pixels (default {','.join(f'{s:g}' for s in defaults.sigmas)})",
    )
    parser.add_argument(
        "--mask",
        default=defaults.mask,
        metavar="auto|none|PATH",
        help="auto: tissue versus glass (RGB); PATH: a mask image, 0 = masked (default %(default)s)",
    )
    parser.add_argument(
        "--fit-level",
        type=int,
        default=defaults.fit_level,
        metavar="L",
        help="pyramid level to sample for the fit; labels are still predicted at --level (default: --level)",
    )
    parser.add_argument(
        "--normalise",
        choices=NORMALISE_MODES,
        default=defaults.normalise,
        help="channel scaling: dtype range, or robust 0.5-99.5 percentiles; auto = robust unless 8-bit "
        "(default %(default)s)",
    )


def _parse_sigmas(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err


def _add_run_arguments(parser: argparse.ArgumentParser, *, with_output_flags: bool = True) -> None:
    parser.add_argument("--level", type=int, default=0, help="input pyramid level (default 0, full resolution)")
    parser.add_argument("--chunk", type=int, default=None, help="processing chunk edge in pixels (default: ~1024)")
    parser.add_argument(
        "--no-convert", action="store_true", help="read the input directly even if its layout calls for converting it"
    )
    parser.add_argument("--workdir", help="where an input is converted when that pays (default: beside the output)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the converted input after the run")
    if with_output_flags:
        parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
        parser.add_argument(
            "--resume", action="store_true", help="continue an interrupted run of the same job (same input, options)"
        )
        _add_output_arguments(parser)
    parser.add_argument("--scheduler", default="threads", help="threads (default), local, or tcp://HOST:PORT")
    parser.add_argument("--workers", type=int, default=None, help="threads or worker processes (default: cores)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log messages")


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = OutputOptions()
    parser.add_argument(
        "--into-input",
        metavar="NAME",
        help="write the labels into the OME-Zarr input's labels/NAME group (same as OUTPUT = INPUT/labels/NAME)",
    )
    parser.add_argument(
        "--ngff", default=defaults.ngff, help="OME-Zarr version: 0.5 (zarr v3, default) or 0.4 (zarr v2)"
    )
    parser.add_argument(
        "--pixel-size", metavar="UM[,UM]", help="pixel size in micrometres (Y,X or one value); default: the input's"
    )
    parser.add_argument(
        "--tiff-flavour",
        default=defaults.tiff_flavour,
        help="TIFF layout: generic (OpenSlide, default) or ome (SubIFDs)",
    )
    parser.add_argument(
        "--tiff-tile", type=int, default=defaults.tiff_tile, help="TIFF tile edge: 256 or 512 (default)"
    )
    parser.add_argument("--tiff-compression", default=defaults.tiff_compression, help="zstd (default) or zlib")
    parser.add_argument("--no-previews", action="store_true", help="skip the PNG thumbnail, label map, overlay, legend")


def _configure_logging(*, quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pixseg: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def _read_options(args: argparse.Namespace) -> ReadOptions:
    return ReadOptions(
        level=args.level,
        chunk=args.chunk,
        convert=not args.no_convert,
        workdir=args.workdir,
        keep_workdir=args.keep_workdir,
    )


def _output_options(args: argparse.Namespace) -> OutputOptions:
    return OutputOptions(
        ngff=args.ngff,
        pixel_size=_parse_pixel_size(args.pixel_size),
        tiff_flavour=args.tiff_flavour,
        tiff_tile=args.tiff_tile,
        tiff_compression=args.tiff_compression,
        previews=not args.no_previews,
    )


def _parse_pixel_size(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as err:
        raise UsageError(f"--pixel-size expects micrometres as Y,X or one number, got {text!r}") from err
    if len(values) not in (1, 2):
        raise UsageError(f"--pixel-size expects one or two numbers, got {text!r}")
    return (values[0], values[-1])


def _output_path(args: argparse.Namespace) -> str:
    if args.into_input is None:
        if args.output is None:
            raise UsageError("pixseg: the following arguments are required: output (or --into-input NAME)")
        return str(args.output)
    target = os.path.join(args.input, "labels", args.into_input)
    if args.output is not None and os.path.normpath(args.output) != os.path.normpath(target):
        raise UsageError(
            f"--into-input {args.into_input!r} writes {target!r}; drop OUTPUT {args.output!r} or make it match"
        )
    return target


def _fit_options(args: argparse.Namespace) -> FitOptions:
    return FitOptions(
        clusters=args.clusters,
        seed=args.seed,
        features=tuple(name.strip() for name in args.features.split(",")),
        sample_size=args.sample_size,
        restarts=args.restarts,
        sigmas=args.sigmas,
        mask=args.mask,
        fit_level=args.fit_level,
        normalise=args.normalise,
    )


def _run_segment(args: argparse.Namespace) -> int:
    with open_scheduler(args.scheduler, workers=args.workers):
        result = segment(
            args.input,
            _output_path(args),
            read=_read_options(args),
            fit=_fit_options(args),
            output=_output_options(args),
            model_path=args.save_model,
            overwrite=args.overwrite,
            resume=args.resume,
            progress=not args.quiet,
        )
    _print_result(result)
    return 0


def _run_apply(args: argparse.Namespace) -> int:
    with open_scheduler(args.scheduler, workers=args.workers):
        result = apply(
            args.model,
            args.input,
            _output_path(args),
            read=_read_options(args),
            output=_output_options(args),
            overwrite=args.overwrite,
            resume=args.resume,
            progress=not args.quiet,
            mask=args.mask,
        )
    _print_result(result)
    return 0


def _run_batch(args: argparse.Namespace) -> int:
    from pixseg.batch import format_plan, plan_batch, run_batch
    from pixseg.config import load_config

    overrides = list(args.overrides)
    for key, value in (("scheduler", args.scheduler), ("workers", args.workers), ("lifetime", args.lifetime)):
        if value is not None:
            overrides.append(f"compute.{key}={json.dumps(value)}")
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
    if args.levels == "auto":
        levels = None
    else:
        try:
            levels = int(args.levels)
        except ValueError as err:
            raise UsageError(f"--levels expects auto or a number, got {args.levels!r}") from err
    result = convert(
        args.input,
        args.output,
        level=args.level,
        chunk=args.chunk,
        levels=levels,
        codec=args.codec,
        shard=args.shard,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    shapes = ", ".join(f"{y}x{x}" for y, x in result.levels)
    print(
        f"wrote {result.output}: levels {shapes}, chunks {result.chunks[0]}x{result.chunks[1]}, {result.seconds:.1f} s"
    )
    return 0


def _run_info(args: argparse.Namespace) -> int:
    description = describe(args.path, level=args.level)
    for key, value in description.items():
        if key in ("model", "statistics"):
            continue
        print(f"{key:>15}: {_format_value(key, value)}")
    if description.get("statistics"):
        print(format_label_table(description["statistics"]))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from pixseg.demo import write_demo_tiff

    os.makedirs(args.directory, exist_ok=True)
    source = os.path.join(args.directory, f"demo-ihc-{args.size}.tif")
    if not os.path.exists(source):
        logger.info(
            "writing demo input %s (%dx%d RGB, tiled TIFF from scikit-image's IHC photo)", source, args.size, args.size
        )
        write_demo_tiff(source, size=args.size)
    output = os.path.join(args.directory, "demo-labels.zarr")
    model = os.path.join(args.directory, "demo-model.json")
    with open_scheduler(args.scheduler, workers=args.workers):
        result = segment(
            source,
            output,
            read=_read_options(args),
            fit=_fit_options(args),
            model_path=model,
            overwrite=True,
            progress=not args.quiet,
        )
    _print_result(result)
    print(f"input: {source}\nmodel: {model}\ninspect with: pixseg info {output}")
    return 0


def _print_result(result: RunResult) -> None:
    height, width = result.shape
    rate = height * width / 1e6 / max(result.seconds, 1e-9)
    print(
        f"wrote {result.output}: {height}x{width} labels 1..{result.model.n_clusters} "
        f"in {result.seconds:.1f} s ({rate:.1f} Mpx/s, {result.n_chunks} chunks, {len(result.levels)} levels)"
    )
    print(format_label_table(result.statistics))
    if result.side_files:
        print("side files: " + ", ".join(result.side_files))


def format_label_table(rows: list[dict[str, Any]]) -> str:
    """A text table of per-label statistics: label, pixels, % of unmasked, area, centroid."""
    columns = list(rows[0]["centroid"]) if rows else []
    header = f"{'label':>5} {'pixels':>14} {'%':>7} {'area mm^2':>11}  " + " ".join(f"{c:>9}" for c in columns)
    lines = [header]
    for row in rows:
        area = f"{row['area_um2'] / 1e6:11.4g}" if row["area_um2"] is not None else f"{'-':>11}"
        centroid = " ".join(f"{v:9.4g}" for v in row["centroid"].values())
        lines.append(f"{row['label']:>5} {row['pixels']:>14} {100 * row['fraction']:7.2f} {area}  {centroid}")
    return "\n".join(lines)


def _format_value(key: str, value: Any) -> str:
    if key == "complete":
        return "complete" if value else "INCOMPLETE (interrupted or still being written)"
    if isinstance(value, tuple | list) and value and isinstance(value[0], tuple | list):
        return ", ".join("x".join(str(n) for n in item) for item in value)
    if isinstance(value, tuple | list):
        return "x".join(str(n) for n in value) if all(isinstance(n, int) for n in value) else str(value)
    return str(value)


if __name__ == "__main__":  # pragma: no cover
    console_main()
