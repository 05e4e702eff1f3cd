"""Placement quality on replayed synthetic traces: makespan and mean utilisation of rmcs's policy
(the real `scheduler_daemon.placement.choose`) against random, round-robin, "most free resources
in total" (seed 000's rule) and a lower bound, on a simulated clock (runs in seconds).

    .venv/bin/python bench/placement_quality.py [--png bench/placement_utilisation.png] [--seed 1]

The model, the same for every policy:
- Jobs arrive from the queue in order; the daemon holds at most `window` of them (8, the
  default `window_size`) and walks them in order at every event; a policy either names a
  cluster now or leaves the job waiting in the window.
- A cluster behaves like Ray: a job sent to it starts on the first node where all its
  resources are free, or waits PENDING in that cluster's own FIFO queue (a smaller job may pass
  it) until a node frees. rmcs's policy only sends a job where a node fits now; the baselines
  send it to a cluster where it fits some node when idle (they are given that much).
- rmcs sees exact usage (its ledger counts its own dispatches and completions between Ray's
  snapshots); the baselines see it too.

Lower bound: the larger of (total work over total capacity, per resource) and the longest
single job (arrival plus duration).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from scheduler_daemon.clusters import ClusterView, HealthState, Node
from scheduler_daemon.jobs import Job
from scheduler_daemon.placement import NoFit, choose
from scheduler_daemon.settings import ClusterConfig

RESOURCES = ("CPU", "GPU")


@dataclass(frozen=True)
class TraceJob:
    id: int
    arrival: float
    need: Mapping[str, float]
    duration: float


@dataclass
class SimNode:
    node_id: str
    total: dict[str, float]
    used: dict[str, float] = field(default_factory=dict)

    def fits(self, need: Mapping[str, float]) -> bool:
        return all(v <= self.total.get(k, 0.0) - self.used.get(k, 0.0) + 1e-9 for k, v in need.items())

    def fits_idle(self, need: Mapping[str, float]) -> bool:
        return all(v <= self.total.get(k, 0.0) + 1e-9 for k, v in need.items())


@dataclass
class SimCluster:
    name: str
    nodes: list[SimNode]
    queue: list[TraceJob] = field(default_factory=list)  # Ray's PENDING jobs, FIFO

    def free(self, res: str) -> float:
        return sum(n.total.get(res, 0.0) - n.used.get(res, 0.0) for n in self.nodes)

    def total(self, res: str) -> float:
        return sum(n.total.get(res, 0.0) for n in self.nodes)

    def feasible(self, need: Mapping[str, float]) -> bool:
        return any(n.fits_idle(need) for n in self.nodes)

    def view(self) -> ClusterView:
        nodes = tuple(Node(n.node_id, dict(n.total), dict(n.used)) for n in self.nodes)
        return ClusterView(ClusterConfig(self.name, f"http://{self.name}"), HealthState.UP, nodes, 0.0, 0.0)


Policy = Callable[[TraceJob, list[SimCluster]], "str | None"]


# ---- policies ----------------------------------------------------------------------------

def rmcs_policy(strategy: str = "spread") -> Policy:
    def policy(job: TraceJob, clusters: list[SimCluster]) -> str | None:
        j = Job(f"j{job.id}", f"j{job.id}", "/bin/true", resources=dict(job.need))
        decision = choose(j, [c.view() for c in clusters], strategy)
        return None if isinstance(decision, NoFit) else decision.cluster
    return policy


def random_policy(seed: int) -> Policy:
    rng = random.Random(seed)

    def policy(job: TraceJob, clusters: list[SimCluster]) -> str | None:
        return rng.choice([c.name for c in clusters if c.feasible(job.need)])
    return policy


def round_robin_policy() -> Policy:
    turn = itertools.count()

    def policy(job: TraceJob, clusters: list[SimCluster]) -> str | None:
        ok = [c.name for c in clusters if c.feasible(job.need)]
        return ok[next(turn) % len(ok)]
    return policy


def most_free_policy() -> Policy:
    """Seed 000's rule: the cluster with the most free resources in total (free CPUs plus free
    GPUs, summed over its nodes) that has enough in total; the job waits when none has. Jobs
    waiting in a cluster's Ray queue do not count against it."""
    def policy(job: TraceJob, clusters: list[SimCluster]) -> str | None:
        ok = [c for c in clusters if c.feasible(job.need)
              and all(c.free(r) >= v - 1e-9 for r, v in job.need.items())]
        if not ok:
            return None
        return max(ok, key=lambda c: sum(c.free(r) for r in RESOURCES)).name
    return policy


# ---- the simulation -------------------------------------------------------------------------

@dataclass
class Result:
    makespan: float
    utilisation: float                     # time-averaged, mean over the resources the fleet has
    timeline: list[tuple[float, float]]    # (time, utilisation) after each event


def simulate(trace: list[TraceJob], layout: Mapping[str, list[Mapping[str, float]]], policy: Policy,
             window: int = 8) -> Result:
    clusters = [SimCluster(name, [SimNode(f"{name}-n{i}", dict(size)) for i, size in enumerate(sizes)])
                for name, sizes in layout.items()]
    by_name = {c.name: c for c in clusters}
    kinds = [r for r in RESOURCES if sum(c.total(r) for c in clusters) > 0]
    capacity = {r: sum(c.total(r) for c in clusters) for r in kinds}
    arrivals = sorted(trace, key=lambda j: (j.arrival, j.id))
    ends: list[tuple[float, int, str, str, TraceJob]] = []
    held: list[TraceJob] = []
    nxt = 0
    now = -math.inf
    done = 0
    area = 0.0
    last = arrivals[0].arrival if arrivals else 0.0
    start_t = last
    timeline: list[tuple[float, float]] = []

    def util() -> float:
        return sum(sum(n.used.get(r, 0.0) for c in clusters for n in c.nodes) / capacity[r] for r in kinds) / len(kinds)

    def start(cluster: SimCluster, job: TraceJob) -> bool:
        for node in cluster.nodes:  # Ray: the first node where it fits
            if node.fits(job.need):
                for k, v in job.need.items():
                    node.used[k] = node.used.get(k, 0.0) + v
                heapq.heappush(ends, (now + job.duration, job.id, cluster.name, node.node_id, job))
                return True
        return False

    def drain_ray_queues() -> None:
        for c in clusters:
            for job in list(c.queue):
                if start(c, job):
                    c.queue.remove(job)

    while done < len(trace):
        # Arrived jobs that wait for window room get in when a job ends, not before.
        t_arr = arrivals[nxt].arrival if nxt < len(arrivals) and arrivals[nxt].arrival > now else math.inf
        t_end = ends[0][0] if ends else math.inf
        t = min(t_arr, t_end)
        if t == math.inf:
            raise RuntimeError("stuck: jobs left that no cluster can start")
        if now > -math.inf:
            area += util() * (t - last)
        last = now = t
        while ends and ends[0][0] <= now:
            _, _, cname, nid, job = heapq.heappop(ends)
            node = next(n for n in by_name[cname].nodes if n.node_id == nid)
            for k, v in job.need.items():
                node.used[k] -= v
            done += 1
        drain_ray_queues()
        while nxt < len(arrivals) and arrivals[nxt].arrival <= now and len(held) < window:
            held.append(arrivals[nxt])
            nxt += 1
        progress = True
        while progress:  # a pass; jobs placed free window room for the next from the queue
            progress = False
            for job in list(held):
                name = policy(job, clusters)
                if name is None:
                    continue
                held.remove(job)
                c = by_name[name]
                if not (not c.queue and start(c, job)):
                    c.queue.append(job)
                progress = True
            while nxt < len(arrivals) and arrivals[nxt].arrival <= now and len(held) < window:
                held.append(arrivals[nxt])
                nxt += 1
                progress = True
        timeline.append((now - start_t, util()))
    return Result(now - start_t, area / (now - start_t) if now > start_t else 0.0, timeline)


def lower_bound(trace: list[TraceJob], layout: Mapping[str, list[Mapping[str, float]]]) -> float:
    cap = {r: sum(s.get(r, 0.0) for sizes in layout.values() for s in sizes) for r in RESOURCES}
    t0 = min(j.arrival for j in trace)
    work = max(sum(j.need.get(r, 0.0) * j.duration for j in trace) / cap[r] for r in RESOURCES if cap[r] > 0)
    return max(work, max(j.arrival + j.duration for j in trace) - t0)


# ---- traces -----------------------------------------------------------------------------------

def mixed_trace(rng: random.Random, n: int = 1500) -> tuple[list[TraceJob], dict[str, list[dict[str, float]]]]:
    """CPU-only and GPU jobs over two CPU clusters and two GPU clusters; all queued at once."""
    layout = {
        "cpu_a": [{"CPU": 16}] * 4,
        "cpu_b": [{"CPU": 32}] * 2,
        "gpu_a": [{"CPU": 16, "GPU": 4}] * 2,
        "gpu_b": [{"CPU": 8, "GPU": 2}] * 4,
    }
    jobs = []
    for i in range(n):
        if rng.random() < 0.25:
            g = rng.choice([1, 1, 2])
            need = {"CPU": float(rng.choice([1, 2, 4])), "GPU": float(g)}
        else:
            need = {"CPU": float(rng.choice([1, 1, 2, 2, 4, 8]))}
        jobs.append(TraceJob(i, 0.0, need, rng.uniform(30, 600)))
    return jobs, layout


def fragmentation_trace(rng: random.Random, n: int = 600) -> tuple[list[TraceJob], dict[str, list[dict[str, float]]]]:
    """Jobs that need whole nodes (16, 8 or 4 CPUs) on clusters whose nodes differ in size."""
    layout = {
        "big": [{"CPU": 16}] * 4,
        "medium": [{"CPU": 8}] * 8,
        "small": [{"CPU": 4}] * 16,
        "mixed": [{"CPU": 16}] * 2 + [{"CPU": 8}] * 4 + [{"CPU": 4}] * 8,
    }
    jobs = []
    for i in range(n):
        cpus = rng.choice([16, 8, 8, 4, 4, 4])
        jobs.append(TraceJob(i, 0.0, {"CPU": float(cpus)}, rng.uniform(60, 300)))
    return jobs, layout


POLICIES: dict[str, Callable[[int], Policy]] = {
    "rmcs": lambda seed: rmcs_policy("spread"),
    "random": lambda seed: random_policy(seed),
    "round-robin": lambda seed: round_robin_policy(),
    "most free (seed 000)": lambda seed: most_free_policy(),
}


def run(name: str, trace: list[TraceJob], layout: dict[str, list[dict[str, float]]], seed: int) -> dict[str, Result]:
    lb = lower_bound(trace, layout)
    print(f"\n{name}: {len(trace)} jobs on {sum(len(v) for v in layout.values())} nodes in {len(layout)} clusters; "
          f"lower bound {lb:,.0f} s")
    print(f"  {'policy':<22} {'makespan':>10} {'x bound':>8} {'mean util':>10}")
    out = {}
    for pname, make in POLICIES.items():
        r = simulate(trace, layout, make(seed))
        out[pname] = r
        print(f"  {pname:<22} {r.makespan:>9,.0f}s {r.makespan / lb:>8.3f} {100 * r.utilisation:>9.1f}%")
    out["_bound"] = Result(lb, 1.0, [])
    return out


def plot(results: dict[str, dict[str, Result]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(10, 4 * len(results)))
    for ax, (trace, res) in zip(axes, results.items()):
        for pname, r in res.items():
            if pname.startswith("_"):
                continue
            xs = [t for t, _ in r.timeline]
            ys = [100 * u for _, u in r.timeline]
            ax.step(xs, ys, where="post", label=f"{pname} (makespan {r.makespan:,.0f} s)", linewidth=1)
        ax.axvline(res["_bound"].makespan, color="black", linestyle="--", linewidth=1, label="lower bound")
        ax.set_title(f"{trace}: utilisation over time")
        ax.set_xlabel("simulated seconds")
        ax.set_ylabel("utilisation %")
        ax.set_ylim(0, 105)
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--png", default=str(Path(__file__).with_name("placement_utilisation.png")))
    p.add_argument("--jobs-fraction", type=float, default=1.0,
                   help="replay this share of each trace's jobs (the figures are for 1.0)")
    a = p.parse_args()
    rng = random.Random(a.seed)
    results = {}
    mixed, mixed_layout = mixed_trace(rng, max(1, round(1500 * a.jobs_fraction)))
    results["mixed CPU/GPU trace"] = run("mixed CPU/GPU trace", mixed, mixed_layout, a.seed)
    frag, frag_layout = fragmentation_trace(rng, max(1, round(600 * a.jobs_fraction)))
    results["fragmentation trace"] = run("fragmentation trace", frag, frag_layout, a.seed)
    m = results["mixed CPU/GPU trace"]
    f = results["fragmentation trace"]
    print(f"\ntarget: mixed makespan within 10% of the bound: rmcs {m['rmcs'].makespan / m['_bound'].makespan:.3f} x bound")
    print(f"target: fragmentation makespan at least 20% shorter than seed 000's rule: rmcs "
          f"{100 * (1 - f['rmcs'].makespan / f['most free (seed 000)'].makespan):.1f}% shorter")
    try:
        plot(results, Path(a.png))
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot", file=sys.stderr)


if __name__ == "__main__":
    main()
