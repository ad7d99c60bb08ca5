"""`python -m audit.bench [--out reports/bench] [--quick] [--seed N] [--cache DIR] [NAME ...]`: run the benchmarks."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import platform
import time
from pathlib import Path

# Explicit list, in the order `make bench` runs them.
BENCHES = ("ingest", "descriptors", "optout", "busy", "engines", "match", "dedup")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m audit.bench")
    parser.add_argument(
        "names", nargs="*", default=list(BENCHES), help=f"any of {', '.join(BENCHES)}"
    )
    parser.add_argument("--out", default="reports/bench")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument(
        "--seed", type=int, help="data seed, for benchmarks that take one (dedup: default 2028)"
    )
    parser.add_argument(
        "--cache",
        help="where benchmarks that build data keep it (dedup: default ~/.cache/audit-bench)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": __import__("os").cpu_count(),
    }
    for name in args.names:
        if name not in BENCHES:
            parser.error(f"unknown benchmark {name!r}; choose from {', '.join(BENCHES)}")
        started = time.perf_counter()
        run = importlib.import_module(f"audit.bench.{name}").run
        extra = {}
        if args.seed is not None and "seed" in inspect.signature(run).parameters:
            extra["seed"] = args.seed
        if args.cache is not None and "cache" in inspect.signature(run).parameters:
            extra["cache"] = Path(args.cache)
        result = run(out, quick=args.quick, **extra)
        print(f"{name}: {time.perf_counter() - started:.0f}s -> {out / (name + '.md')}")
        print(json.dumps(result, indent=2, default=str)[:2000])
    (out / "machine.json").write_text(json.dumps(machine, indent=2) + "\n")


if __name__ == "__main__":
    main()
