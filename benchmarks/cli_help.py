"""How long `cxrtool --help` and every subcommand's `--help` take, each in a fresh process.

Usage: python benchmarks/cli_help.py [--runs 5] [--src DIR]

Help must answer in well under a second: the CLI imports its library (torch, scikit-learn, faiss)
only inside the command functions. Each line is the median wall time of --runs fresh processes
(the installed `cxrtool` script beside this interpreter, else `python -m cxrtool.cli`), next to the
median of `python -c "import torch"` on the same machine, the cost help would pay if a command
module imported torch at start-up. `python -c pass` shows the interpreter's own start. ``--src``
times another source tree instead (on PYTHONPATH, e.g. a `git archive HEAD src` extracted to /tmp),
for a before/after on the same machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def commands() -> Iterator[list[str]]:
    """Every command path of the CLI: the root, each subcommand and each sub-subcommand."""
    import typer

    from cxrtool.cli.main import app

    def walk(cmd, path: list[str]) -> Iterator[list[str]]:
        yield path
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            yield from walk(sub, [*path, name])

    yield from walk(typer.main.get_command(app), [])


def median_seconds(argv: list[str], runs: int, env: dict[str, str] | None = None) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                       env={**os.environ, "COLUMNS": "100", **(env or {})})
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per command (the median is printed)")
    ap.add_argument("--src", type=Path, default=None, help="time the cxrtool package under this folder instead")
    args = ap.parse_args()
    script = Path(sys.executable).parent / "cxrtool"
    cli = [str(script)] if script.is_file() and not args.src else [sys.executable, "-m", "cxrtool.cli"]
    env = {"PYTHONPATH": str(args.src.resolve())} if args.src else None
    start = median_seconds([sys.executable, "-c", "pass"], args.runs)
    torch = median_seconds([sys.executable, "-c", "import torch"], args.runs)
    print(f"{os.cpu_count()} CPUs; median of {args.runs} fresh processes each; {' '.join(Path(c).name for c in cli)}"
          + (f" with PYTHONPATH={args.src}" if args.src else ""))
    print(f"{'python -c pass':<32} {start:6.3f} s")
    print(f"{'python -c import torch':<32} {torch:6.3f} s")
    print(f"{'command':<32} {'help':>8} {'/ import torch':>15}")
    worst = 0.0
    for path in commands():
        seconds = median_seconds([*cli, *path, "--help"], args.runs, env)
        worst = max(worst, seconds)
        print(f"{' '.join(['cxrtool', *path, '--help']):<32} {seconds:6.3f} s {seconds / torch:14.2f}x")
    print(f"slowest help: {worst:.3f} s ({worst / torch:.2f}x importing torch)")


if __name__ == "__main__":
    main()
