"""Fair share across queues on a simulated fleet: each queue's share of the CPUs over time against
its fair share, and how long a queue that goes from idle to busy takes to get its guarantee back.

    .venv/bin/python bench/fair_share.py                  # 3 queues, plot in bench/fair_share.png
    .venv/bin/python bench/fair_share.py --scale 20 --minutes 6

The daemon runs in this process against the real RabbitMQ and a fleet of fake dashboards on a
compressed clock (`--scale` simulated seconds per wall second). Queues (docs/queues.md):
`light` (weight 1) and `heavy` (weight 3) flood from the start; `urgent` (weight 2, guaranteed
CPU `--guaranteed`) is idle until a third of the run, then floods too. Every job asks for 1 CPU
and runs 20 to 60 simulated seconds. The fair share printed is the weighted share among the busy
queues, with `urgent` given at least its guarantee.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from common import quiet_logs  # noqa: F401  (puts tests/ on sys.path)
from fakeray import ScaledClock, make_nodes, start_fleet
from support import delete_topology, make_settings, publish_many

from scheduler_daemon.broker import declare
from scheduler_daemon.daemon import Daemon
from scheduler_daemon.queueconf import parse_queues

WEIGHTS = {"light": 1.0, "heavy": 3.0, "urgent": 2.0}


def held(fleet: Any, now: float) -> dict[str, float]:
    out = {q: 0.0 for q in WEIGHTS}
    for cluster in fleet.clusters:
        for job in cluster.jobs.values():
            if job.status(now) == "RUNNING":
                q = job.submission_id.split("-", 1)[0]
                out[q] = out.get(q, 0.0) + job.need.get("CPU", 0.0)
    return out


def fair(busy: list[str], total: float, guaranteed: float) -> dict[str, float]:
    weights = sum(WEIGHTS[q] for q in busy)
    share = {q: WEIGHTS[q] / weights if q in busy else 0.0 for q in WEIGHTS}
    if "urgent" in busy and share["urgent"] * total < guaranteed:
        rest = 1.0 - guaranteed / total
        others = sum(WEIGHTS[q] for q in busy if q != "urgent")
        share = {q: (guaranteed / total if q == "urgent" else WEIGHTS[q] / others * rest if q in busy else 0.0)
                 for q in WEIGHTS}
    return share


async def flood(s: Any, queue: str, n: int, rng: random.Random) -> None:
    await publish_many(s, [({"submission_id": f"{queue}-{uuid.uuid4().hex[:10]}",
                             "entrypoint": f"/bin/sleep {rng.randint(20, 60)}"}, 0) for _ in range(n)], queue=queue)


async def run(args: argparse.Namespace) -> None:
    quiet_logs()
    rng = random.Random(7)
    clock = ScaledClock(args.scale)
    sizes = [{"CPU": args.cpus_per_node, "memory": 64}] * args.nodes
    fleet = await start_fleet(args.clusters, name="fair", clock=clock, nodes_of=lambda n: make_nodes(n, sizes))
    total = float(args.clusters * args.nodes * args.cpus_per_node)
    tmp = Path(tempfile.mkdtemp(prefix="rmcs-fair-"))
    s = make_settings(tmp, window_size=16, probe_interval_s=0.2, track_interval_s=0.2, status_service="off")
    s = replace(s, queues=parse_queues({"light": {"weight": 1}, "heavy": {"weight": 3},
                                        "urgent": {"weight": 2, "guaranteed": {"CPU": args.guaranteed}}}))
    await declare(s)
    daemon = Daemon(s, fleet.configs())
    samples: list[tuple[float, dict[str, float], dict[str, float]]] = []
    reclaim: float | None = None
    try:
        await daemon.start()
        per_queue = int(total * args.minutes * 60 / 40 * 1.5)  # more than the fleet can run
        await asyncio.gather(flood(s, "light", per_queue, rng), flood(s, "heavy", per_queue, rng))
        start = clock()
        end = args.minutes * 60.0
        urgent_at: float | None = None
        publishing: asyncio.Task[None] | None = None
        print(f"{'t (s)':>6}  " + "  ".join(f"{q:>15}" for q in WEIGHTS) + "   (held share / fair share)")
        next_print = 0.0
        while (t := clock() - start) < end:
            if urgent_at is None and t >= end / 3:
                urgent_at = t  # from its first message: jobs start while the rest are published
                publishing = asyncio.create_task(flood(s, "urgent", per_queue, rng))
            h = held(fleet, clock())
            busy = ["light", "heavy"] + (["urgent"] if urgent_at is not None else [])
            f = fair(busy, total, args.guaranteed)
            samples.append((t, {q: h[q] / total for q in WEIGHTS}, f))
            if urgent_at is not None and reclaim is None and h["urgent"] >= args.guaranteed:
                reclaim = t - urgent_at
            if t >= next_print:
                print(f"{t:6.0f}  " + "  ".join(f"{h[q] / total:6.1%} / {f[q]:5.1%}" for q in WEIGHTS))
                next_print += end / 24
            await asyncio.sleep(0.1)
        if publishing is not None:
            await publishing
    finally:
        await daemon.stop()
        await fleet.close()
        await delete_topology(s)
    after = [x for x in samples if x[0] >= 60 and x[0] < end / 3]
    late = [x for x in samples if x[0] >= end / 3 + 60]
    for name, part in (("two queues, after the first minute", after), ("three queues, a minute after urgent", late)):
        if part:
            means = {q: sum(x[1][q] for x in part) / len(part) for q in WEIGHTS}
            print(f"{name}: " + ", ".join(f"{q} {means[q]:.1%} (fair {part[-1][2][q]:.1%})" for q in WEIGHTS))
    print(f"urgent got its guarantee of CPU {args.guaranteed:g} back "
          + (f"{reclaim / args.scale:.2f} wall s ({reclaim:.0f} simulated s)" if reclaim is not None else "never")
          + " after it started to publish")
    try:
        plot(samples, args, Path(args.plot))
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot", file=sys.stderr)


def plot(samples: list[tuple[float, dict[str, float], dict[str, float]]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ts = [x[0] for x in samples]
    for q, color in zip(WEIGHTS, ("tab:blue", "tab:orange", "tab:green")):
        ax.plot(ts, [x[1][q] for x in samples], color=color, label=f"{q} (weight {WEIGHTS[q]:g})")
        ax.plot(ts, [x[2][q] for x in samples], color=color, linestyle="--", linewidth=1)
    ax.set_xlabel("simulated seconds")
    ax.set_ylabel("share of the fleet's CPUs")
    ax.set_title(f"bench/fair_share.py: held (solid) and fair (dashed) shares; urgent guaranteed "
                 f"CPU {args.guaranteed:g} of {args.clusters * args.nodes * args.cpus_per_node}", fontsize=9)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=10.0, help="simulated seconds per wall second")
    p.add_argument("--minutes", type=float, default=6.0, help="simulated minutes to run")
    p.add_argument("--clusters", type=int, default=2)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--cpus-per-node", type=int, default=16)
    p.add_argument("--guaranteed", type=float, default=16.0, help="urgent's guaranteed CPUs")
    p.add_argument("--plot", default=str(Path(__file__).with_name("fair_share.png")))
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
