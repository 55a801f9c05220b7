"""The ``logitkit`` command: ``calibrate`` (the main job), ``apply`` and ``bench``.

``main(argv)`` never raises and never prints a traceback for a user error: a bad file, option or
value prints one line on stderr and returns 2.  Only the subcommand that runs is imported.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

__all__ = ["main"]

USER_ERROR = 2


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse that returns to ``main`` instead of exiting, and reports errors in one line."""

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise _Exit(status)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise _Exit(USER_ERROR)


def _bench_unavailable(reason: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        from ._io import CliError

        raise CliError(f"`logitkit bench` is not available in this installation ({reason})")

    return run


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; the ``bench`` module is imported only when ``argv`` selects it."""
    from .. import __version__
    from . import _apply, _calibrate

    parser = _Parser(prog="logitkit", description="Calibrated probabilities from logits.")
    parser.add_argument("--version", action="version", version=f"logitkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    cal = sub.add_parser(
        "calibrate", help="fit a calibrator and report held-out calibration before/after",
        description="Fit a calibrator on predictions and labels, print held-out before/after "
                    "metrics (accuracy, NLL, ECE, MCE, Brier), and write report.json and a "
                    "reliability diagram. Without a file, runs a built-in demo.")
    _calibrate.configure(cal)
    app = sub.add_parser("apply", help="write calibrated probabilities",
                         description="Write the calibrated probabilities of a file, with the "
                                     "calibrator of a report.json or a given temperature.")
    _apply.configure(app)
    bench = sub.add_parser("bench", help="side-by-side timings against installed peers",
                           description="Side-by-side timings against the installed peers.")
    if argv and argv[0] == "bench":
        try:
            from . import bench as bench_module
        except ImportError as exc:
            bench.set_defaults(_run=_bench_unavailable(str(exc)), _lenient=True)
        else:
            bench_module.configure(bench)
            bench.set_defaults(_run=bench_module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``logitkit`` command line; returns the exit status.

    Args:
        argv: the arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        0 on success, 2 for a user error (one line on stderr), 1 for an internal error, 130
        when interrupted (Ctrl-C), at any point: the imports, which take a noticeable part of
        a second, included.
    """
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("logitkit: interrupted", file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None) -> int:
    from .. import LogitkitError
    from ._io import CliError

    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(args_list)
        args, extra = parser.parse_known_args(args_list)
        if extra and not getattr(args, "_lenient", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        run = getattr(args, "_run", None)
        if run is None:
            parser.print_help(sys.stderr)
            return USER_ERROR
        return int(run(args) or 0)
    except _Exit as exc:
        return exc.code
    except (CliError, LogitkitError) as exc:
        print(f"logitkit: error: {exc}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt:
        print("logitkit: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("logitkit: error: out of memory", file=sys.stderr)
        return 1
    except Exception as exc:
        text = str(exc).strip().splitlines()
        print(f"logitkit: internal error: {type(exc).__name__}: {text[0] if text else ''}",
              file=sys.stderr)
        return 1
