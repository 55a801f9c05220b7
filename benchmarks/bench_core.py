"""Core timings: logitkit vs SciPy, PyTorch (all threads) and JAX, as multiples of memcpy.

The same benchmark as ``logitkit bench`` (it accepts the same options), runnable from a checkout:

    python benchmarks/bench_core.py                       # the full table
    python benchmarks/bench_core.py --quick               # small shapes, 3 repeats
    python benchmarks/bench_core.py --ops softmax,logsumexp --dtypes float32 --repeats 11 --json

Each figure is the median of the repeats divided by the median time of ``np.copyto`` of the same
array in the same run.  Timings on a shared machine are noisy: compare figures from one run.
"""

from __future__ import annotations

import argparse
import sys

from logitkit.cli.bench import configure, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_core", description=__doc__.splitlines()[0])
    configure(parser)
    args = parser.parse_args(argv)
    from logitkit.cli._io import CliError

    try:
        return run(args)
    except CliError as exc:
        print(f"bench_core: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
