"""Throughput and latency with the state in SQLite and in PostgreSQL, against the code from
before shared state, in one sitting: the runs alternate, round by round, and medians are compared.

    git worktree add --detach ../rmcs-base c2c1e3b     # the code before shared state
    .venv/bin/python bench/shared_state.py --base ../rmcs-base [--rounds 3] [--jobs 5000] [--n 400]

Each run is a process of its own: `bench/throughput.py --skip-bare` (queue -> POST /api/jobs/,
sustained jobs/s) and `bench/latency_fake.py --skip-bare` (publish -> POST, one job at a time,
p50 and p99), from the base tree for "before" and from this tree with `--state sqlite` and
`--state postgresql` (a database of its own per run, on the local PostgreSQL).
Target: neither state is more than 10% below the code before (throughput lower, latency higher).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def run(tree: Path, script: str, args: list[str]) -> str:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, str(tree / "bench" / script), *args], cwd=tree, env=env,
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"{script} in {tree} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return out.stdout


def throughput(tree: Path, jobs: int, state: list[str]) -> float:
    text = run(tree, "throughput.py", ["--skip-bare", "--jobs", str(jobs), *state])
    return float(re.findall(r"queue -> POST /api/jobs/: ([\d,]+) jobs/s", text)[-1].replace(",", ""))


def latency(tree: Path, n: int, state: list[str]) -> tuple[float, float]:
    text = run(tree, "latency_fake.py", ["--skip-bare", "--n", str(n), *state])
    p50, p99 = re.findall(r"p50 ([\d.]+) ms .*p99 ([\d.]+) ms", text)[-1]
    return float(p50), float(p99)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, type=Path, help="a checkout of the code before (c2c1e3b)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--n", type=int, default=400)
    a = p.parse_args()
    variants = {"before (SQLite)": (a.base.resolve(), []), "SQLite": (HERE, ["--state", "sqlite"]),
                "PostgreSQL": (HERE, ["--state", "postgresql"])}
    rates: dict[str, list[float]] = {v: [] for v in variants}
    lats: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for r in range(1, a.rounds + 1):
        for name, (tree, state) in variants.items():
            rates[name].append(throughput(tree, a.jobs, state))
            lats[name].append(latency(tree, a.n, state))
            print(f"[{r}] {name}: {rates[name][-1]:,.0f} jobs/s; p50 {lats[name][-1][0]:.2f} ms, "
                  f"p99 {lats[name][-1][1]:.2f} ms", flush=True)
    base_rate = statistics.median(rates["before (SQLite)"])
    base_p50 = statistics.median(x[0] for x in lats["before (SQLite)"])
    base_p99 = statistics.median(x[1] for x in lats["before (SQLite)"])
    for name in variants:
        rate = statistics.median(rates[name])
        p50 = statistics.median(x[0] for x in lats[name])
        p99 = statistics.median(x[1] for x in lats[name])
        print(f"{name}: {rate:,.0f} jobs/s ({100 * (rate / base_rate - 1):+.1f}%), p50 {p50:.2f} ms "
              f"({100 * (p50 / base_p50 - 1):+.1f}%), p99 {p99:.2f} ms ({100 * (p99 / base_p99 - 1):+.1f}%) "
              f"[medians of {a.rounds}; change against before]")


if __name__ == "__main__":
    main()
