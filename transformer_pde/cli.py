"""The ``transformer-pde`` command: argument parsing only, no numerics.

Usage::

    transformer-pde demo [--out DIR] [--quick] [--seed S] [--n N] [--T T]
                         [--beta-circle B] [--beta-sphere B] [--[no-]progress]
    transformer-pde validate [--quick] [--out DIR] [--dir DIR] [--only NAME ...] [--[no-]progress]
    transformer-pde run STUDY.toml [--output DIR] [--resume] [--[no-]progress]
    transformer-pde sweep STUDY.toml [--output FILE] [--resume] [--workers N]
                                     [--scheduler ADDRESS] [--[no-]progress]
    transformer-pde plot RESULT.h5|DIR ... [--out DIR]
    transformer-pde --version

``python -m transformer_pde`` is the same command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__

__all__ = ["main", "build_parser", "COMMANDS", "DEFAULT_OUT", "DEFAULT_VALIDATION_OUT"]

#: default folder of ``transformer-pde demo``, relative to the working directory
DEFAULT_OUT = "transformer_pde_demo"
#: default folder of ``transformer-pde validate``, relative to the working directory
DEFAULT_VALIDATION_OUT = "transformer_pde_validation"


def _int_at_least(minimum: int, why: str = ""):
    """An argparse type: an integer >= minimum (``why`` explains the bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}{why}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0.0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _path(text: str) -> str:
    """An argparse type: a non-empty path (an empty one would silently mean the working directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"expected a path, got {text!r}; write . for the working directory"
        )
    return text


#: the sub-commands, in the order of the usage text
COMMANDS = ("demo", "validate", "run", "sweep", "plot")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``transformer-pde`` (sub-commands demo, validate, run, sweep, plot)."""
    parser = argparse.ArgumentParser(
        prog="transformer-pde",
        description="Mean-field dynamics of self-attention: token particles, the "
                    "Transformer PDE, and their checks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="simulate attention tokens on the circle and the sphere; write a figure and a summary",
        description="Simulate softmax self-attention tokens (post-LN, Q=K=V=I) from uniform "
                    "random positions on the circle and on the sphere S^2, and write "
                    "tokens.png and summary.json into a folder.",
    )
    demo.add_argument("--out", metavar="DIR", type=_path, default=DEFAULT_OUT,
                      help=f"folder to write into, created if missing (default: ./{DEFAULT_OUT})")
    demo.add_argument("--quick", action="store_true",
                      help="fewer tokens and a shorter time (n=32, T=15) unless given")
    demo.add_argument("--seed", metavar="S", type=_int_at_least(0), default=0,
                      help="seed of the random initial tokens (default: 0)")
    demo.add_argument("--n", type=_int_at_least(2, " (tokens interact in pairs)"), default=None,
                      help="number of tokens per run, >= 2 (default: 64, 32 with --quick)")
    demo.add_argument("--T", type=_positive_float, default=None, dest="T",
                      help="final time (default: 30, 15 with --quick)")
    demo.add_argument("--beta-circle", metavar="B", type=_positive_float, default=9.0,
                      help="inverse temperature on the circle (default: 9)")
    demo.add_argument("--beta-sphere", metavar="B", type=_positive_float, default=1.0,
                      help="inverse temperature on the sphere (default: 1)")
    demo.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                      help="progress bars on stderr (default: when stderr is a terminal)")
    val = sub.add_parser(
        "validate",
        help="run the validations against theory and write a Markdown report",
        description="Run the validations shipped with the package (the modules of "
                    "transformer_pde.validation, each in a fresh interpreter: each compares "
                    "measurements with theory and writes NAME/NAME.json and NAME/NAME.png) and "
                    f"write report.md into a folder, by default ./{DEFAULT_VALIDATION_OUT}/ "
                    "(relative to the working directory). Works from any directory.",
    )
    val.add_argument("--out", metavar="DIR", type=_path, default=DEFAULT_VALIDATION_OUT,
                     help=f"folder for the report and results, created if missing "
                          f"(default: ./{DEFAULT_VALIDATION_OUT})")
    val.add_argument("--quick", action="store_true",
                     help="the small, fast mode (a few minutes for all thirteen)")
    val.add_argument("--dir", metavar="DIR", type=_path, default=None,
                     help="run the *.py scripts of this folder instead (your own validations, each "
                          "taking --quick and --out DIR and writing NAME.json; default: the package's)")
    val.add_argument("--only", metavar="NAME", nargs="+", default=None,
                     help="run only these validations (module or script names without .py)")
    val.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="a progress bar over the validations on stderr (default: when stderr is a "
                          "terminal)")
    run = sub.add_parser(
        "run",
        help="run the tasks of a TOML run file; write one HDF5 file per task",
        description="Read a TOML run file (model, initial condition, and the tasks [particles], "
                    "[meanfield], [gaussian], [convergence]), check every key, run the tasks and "
                    "write DIR/<task>.h5 (read back with transformer_pde.load) and DIR/run.json. "
                    "Run files are data, never executed.",
    )
    run.add_argument("runfile", metavar="STUDY.toml", help="the run file")
    run.add_argument("--output", metavar="DIR", type=_path, default=None,
                     help="folder to write into (default: output.dir of the run file, else "
                          "./STUDY_results)")
    run.add_argument("--resume", action="store_true",
                     help="keep complete results in DIR, continue partial ones, run the rest")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bars on stderr (default: when stderr is a terminal)")
    swp = sub.add_parser(
        "sweep",
        help="run a run file over the parameter grid of its [sweep] section",
        description="Run a TOML run file at every point of its [sweep] grid (\"section.key\" = "
                    "[values]), in local processes or on a Dask cluster, gathering the results "
                    "into one HDF5 file with one group per point. A point that fails is "
                    "recorded with its error; the others finish.",
    )
    swp.add_argument("runfile", metavar="STUDY.toml", help="the run file, with a [sweep] section")
    swp.add_argument("--output", metavar="FILE", type=_path, default=None,
                     help="HDF5 file of the sweep (default: ./STUDY_sweep.h5)")
    swp.add_argument("--resume", action="store_true", help="compute only the points FILE lacks")
    swp.add_argument("--workers", metavar="N", type=_int_at_least(1), default=None,
                     help="local worker processes (default: the number of cores)")
    swp.add_argument("--scheduler", metavar="ADDRESS", default=None,
                     help="address of a Dask distributed scheduler to run the points on "
                          "(needs the extra: pip install \"transformer_pde[dask]\")")
    swp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="a progress bar over the points on stderr (default: when stderr is a "
                          "terminal)")
    plot = sub.add_parser(
        "plot",
        help="draw the standard figure of saved results (RESULT.png beside each file)",
        description="Load each result file (or every *.h5 in a folder, e.g. the output of "
                    "'transformer-pde run') and draw its standard figure: tokens for particle "
                    "runs, a density map for grid runs, covariance ellipses for Gaussian moments, "
                    "W against n for convergence studies, the points for sweeps.",
    )
    plot.add_argument("paths", metavar="RESULT.h5|DIR", nargs="+", help="result files or folders")
    plot.add_argument("--out", metavar="DIR", type=_path, default=None,
                      help="folder for the PNG files (default: beside each result file)")
    return parser


def _plot_command(args) -> int:
    from . import storage

    files = []
    for name in args.paths:
        p = Path(name).expanduser()
        files.extend(sorted(p.glob("*.h5")) if p.is_dir() else [p])
    if not files:
        print("transformer-pde plot: error: no .h5 result files found in "
              + ", ".join(args.paths), file=sys.stderr)
        return 1
    status = 0
    for path in files:
        try:
            ax = storage.load(path).plot()
            png = (Path(args.out).expanduser() if args.out else path.parent) / f"{path.stem}.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            from ._io import atomic_path

            with atomic_path(png) as tmp:
                ax.figure.savefig(tmp, dpi=120)
            print(f"transformer-pde plot: {path} -> {png}")
        except (OSError, ValueError, TypeError, KeyError) as exc:
            print(f"transformer-pde plot: error: {path}: {exc}", file=sys.stderr)
            status = 1
    return status


def _run_command(args) -> int:
    from . import runfile

    try:
        spec = runfile.read(args.runfile)
        out = Path(args.output).expanduser() if args.output else runfile.default_output(spec)
        results = runfile.run(spec, out, resume=args.resume, progress=args.progress)
    except (OSError, ValueError, TypeError, FloatingPointError) as exc:
        print(f"transformer-pde run: error: {exc}", file=sys.stderr)
        return 1
    print(f"transformer-pde run: wrote {out}")
    for task, result in results.items():
        info = getattr(result, "info", None)
        status = getattr(info, "status", "done")
        print(f"  {task}: {out / (task + '.h5')} ({status})")
    return 0


def _sweep_command(args) -> int:
    from . import runfile
    from .sweep import sweep

    try:
        spec = runfile.read(args.runfile)
        grid = spec.sections.get("sweep") or {}
        if not grid:
            raise ValueError(f"{args.runfile}: no [sweep] section: add the keys to vary, e.g. "
                             "[sweep] \"model.beta\" = [1.0, 4.0]")
        out = Path(args.output or f"{Path(args.runfile).stem}_sweep.h5").expanduser()
        executor = client = None
        if args.scheduler:
            try:
                from distributed import Client
            except ImportError:
                raise ValueError("--scheduler needs Dask: pip install \"transformer_pde[dask]\"") from None
            client = Client(args.scheduler)
            executor = client.get_executor()
        try:
            result = sweep(spec, grid, executor=executor, max_workers=args.workers, output=out,
                           resume=args.resume, progress=args.progress)
        finally:
            if client is not None:
                client.close()
    except (OSError, ValueError, TypeError) as exc:
        print(f"transformer-pde sweep: error: {exc}", file=sys.stderr)
        return 1
    print(f"transformer-pde sweep: {result!r}; wrote {out}")
    for point, err in zip(result.points, result.errors, strict=True):
        if err is not None:
            print(f"  failed {point}: {err.strip().splitlines()[-1]}")
    return 0 if not result.failed else 1


def _print_summary(summary: dict) -> None:
    print(f"transformer-pde demo: wrote {summary['out_dir']}")
    print(f"  files: {', '.join(summary['files'])}")
    for name in ("circle", "sphere"):
        run = summary["runs"][name]
        print(
            f"  {name:6s} (d={run['d']}): n={run['n']} beta={run['beta']:g} T={run['T']:g} "
            f"steps={run['steps']} | clusters {run['clusters_start']} -> {run['clusters_end']} "
            f"| energy {run['energy_start']:.6g} -> {run['energy_end']:.6g} "
            f"(max {run['energy_max']:.6g}) | max| |x|-1 | = {run['max_norm_deviation']:.1e} "
            f"| {run['wall_time_s']:.2f} s"
        )
    pde = summary["runs"]["circle_pde"]
    print(
        f"  circle mean field: M={pde['n_cells']} cells, steps={pde['steps']} | "
        f"{pde['peaks_end']} density peaks vs {pde['particle_clusters_end']} particle clusters "
        f"| mass drift {pde['mass_drift']:.1e}, min density {pde['min_density']:.1e} "
        f"| {pde['wall_time_s']:.2f} s"
    )
    print(
        f"  W_2(particles, mean field) [rad]: {pde['w2_particles_pde_start']:.4f} at t=0 "
        f"(kernel estimate, bandwidth {pde['bandwidth']:g}), {pde['w2_particles_pde_end']:.4f} at "
        f"t={summary['runs']['circle']['T']:g}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``transformer-pde`` command.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; ``sys.argv[1:]`` by default.

    Returns
    -------
    int
        Exit status: 0 on success, 1 if the command failed (the message goes to stderr).
        Invalid arguments, ``--help`` and ``--version`` exit through ``SystemExit``
        raised by argparse (status 2 for invalid arguments, 0 otherwise).
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if a not in ("-h", "--help", "--version")), None)
    if first is not None and first.startswith("-") and first not in COMMANDS:
        parser.error(f"unrecognized option {first!r} before COMMAND: COMMAND is one of "
                     f"{', '.join(COMMANDS)} (options go after it: transformer-pde COMMAND --help)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo  # lazily: parsing --help stays fast

        out = Path(args.out).expanduser().absolute()
        try:
            summary = run_demo(out, n=args.n, beta_circle=args.beta_circle,
                               beta_sphere=args.beta_sphere, T=args.T, seed=args.seed,
                               quick=args.quick, progress=args.progress)
        except (OSError, ValueError, TypeError, FloatingPointError) as exc:
            print(f"transformer-pde demo: error: {exc}", file=sys.stderr)
            return 1
        _print_summary(summary)
        return 0
    if args.command == "validate":
        from .checks import run_validations

        try:
            report, passed = run_validations(Path(args.out).expanduser(), quick=args.quick,
                                             only=args.only, directory=args.dir,
                                             progress=args.progress)
        except (OSError, ValueError) as exc:
            print(f"transformer-pde validate: error: {exc}", file=sys.stderr)
            return 1
        print(f"transformer-pde validate: {'all passed' if passed else 'FAILURES'}; report {report}")
        return 0 if passed else 1
    if args.command == "run":
        return _run_command(args)
    if args.command == "sweep":
        return _sweep_command(args)
    if args.command == "plot":
        return _plot_command(args)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse catches it
    return 2  # pragma: no cover
