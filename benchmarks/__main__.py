"""Run every benchmark (``make bench``) or some: ``python -m benchmarks [--only NAME ...] [--quick]``.

Each benchmark is a module ``benchmarks/<name>.py`` with a ``main(argv: list[str]) -> None`` that writes JSON,
a Markdown table and, where a curve says more, a PNG under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from pathlib import Path


def available() -> list[str]:
    """Names of the benchmark modules in this folder."""
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--only", nargs="*", default=None, help=f"benchmarks to run (default all): {available()}"
    )
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run of each benchmark")
    args, rest = parser.parse_known_args(argv)
    names = args.only or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; available: {available()}")
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        start = time.perf_counter()
        print(f"== benchmarks.{name}", flush=True)
        module.main([*(["--quick"] if args.quick else []), *rest])
        print(f"== benchmarks.{name} done in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
