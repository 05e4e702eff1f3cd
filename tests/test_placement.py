"""Placement: which cluster and node a job goes to, and why none when none fits."""

from __future__ import annotations

from typing import Any, Mapping

import pytest

from scheduler_daemon.clusters import ClusterView, HealthState, Node, ray_name
from scheduler_daemon.jobs import GIB, Job
from scheduler_daemon.placement import NoFit, Placement, choose, has_spare_capacity, needs
from scheduler_daemon.settings import ClusterConfig

UP, DEGRADED, DOWN, UNKNOWN = HealthState.UP, HealthState.DEGRADED, HealthState.DOWN, HealthState.UNKNOWN


def job(resources: Mapping[str, float] | None = None, **kw: Any) -> Job:
    return Job(submission_id="s1", job_id="j1", entrypoint="echo",
               resources=dict({"CPU": 1.0} if resources is None else resources), **kw)


def node(node_id: str, total: Mapping[str, float], used: Mapping[str, float] | None = None) -> Node:
    return Node(node_id, dict(total), dict(used or {}))


def view(name: str, *nodes: Node, health: HealthState = UP, weight: float = 1.0, prefer: bool = False,
         tags: frozenset[str] = frozenset()) -> ClusterView:
    cfg = ClusterConfig(name, f"http://{name}:8265", weight=weight, prefer=prefer, tags=tags)
    return ClusterView(cfg, health, tuple(nodes))


def cpu_cluster(used_cpu: float = 0.0, **kw: Any) -> ClusterView:
    return view("cpu_cluster", node("c1", {"CPU": 2.0, "memory": 8 * GIB}, {"CPU": used_cpu}), tags=frozenset({"cpu"}), **kw)


def gpu_cluster(used_cpu: float = 0.0, used_gpu: float = 0.0, **kw: Any) -> ClusterView:
    return view("gpu_cluster", node("g1", {"CPU": 2.0, "GPU": 2.0, "memory": 8 * GIB},
                                    {"CPU": used_cpu, "GPU": used_gpu}), tags=frozenset({"gpu"}), **kw)


def placed(result: Placement | NoFit) -> Placement:
    assert isinstance(result, Placement), result
    return result


def nofit(result: Placement | NoFit) -> NoFit:
    assert isinstance(result, NoFit), result
    return result


def test_gpu_job_goes_to_the_gpu_cluster() -> None:
    p = placed(choose(job({"CPU": 1, "GPU": 1}), [cpu_cluster(), gpu_cluster()]))
    assert (p.cluster, p.node_id) == ("gpu_cluster", "g1")


@pytest.mark.parametrize("strategy", ["spread", "pack"])
def test_cpu_job_prefers_the_cluster_without_gpus(strategy: str) -> None:
    views = [gpu_cluster(), cpu_cluster()]
    assert placed(choose(job({"CPU": 1}), views, strategy)).cluster == "cpu_cluster"
    # Even when the CPU cluster is half full and the GPU cluster idle.
    views = [gpu_cluster(), cpu_cluster(used_cpu=1)]
    assert placed(choose(job({"CPU": 1}), views, strategy)).cluster == "cpu_cluster"
    # The GPU cluster takes it when the CPU cluster is full.
    views = [gpu_cluster(), cpu_cluster(used_cpu=2)]
    assert placed(choose(job({"CPU": 1}), views, strategy)).cluster == "gpu_cluster"


def test_preferred_cluster_wins_when_it_fits_now() -> None:
    # The GPU cluster scores lower for a CPU job, but the job asks for it.
    p = placed(choose(job(preferred_cluster="gpu_cluster"), [cpu_cluster(), gpu_cluster(weight=0.1)]))
    assert p.cluster == "gpu_cluster"
    assert "preferred" in p.explanation


def test_falls_back_from_a_busy_preferred_cluster() -> None:
    p = placed(choose(job({"CPU": 1}, preferred_cluster="gpu_cluster"), [cpu_cluster(), gpu_cluster(used_cpu=2)]))
    assert p.cluster == "cpu_cluster"
    assert "fell back from preferred gpu_cluster" in p.explanation
    assert "gpu_cluster: busy" in p.explanation


def test_falls_back_from_a_down_preferred_cluster() -> None:
    p = placed(choose(job(preferred_cluster="gpu_cluster"), [cpu_cluster(), gpu_cluster(health=DOWN)]))
    assert p.cluster == "cpu_cluster"
    assert "fell back from preferred gpu_cluster" in p.explanation
    assert "gpu_cluster: down" in p.explanation


def test_unconfigured_preferred_cluster_is_explained() -> None:
    p = placed(choose(job(preferred_cluster="nowhere"), [cpu_cluster()]))
    assert p.cluster == "cpu_cluster"
    assert "nowhere" in p.explanation


def test_resources_must_fit_on_one_node() -> None:
    split = view("split", node("n1", {"CPU": 2}, {"CPU": 1}), node("n2", {"CPU": 2}, {"CPU": 1}))
    r = nofit(choose(job({"CPU": 2}), [split]))
    assert not r.infeasible  # it would fit an idle node
    # Two idle one-CPU nodes never fit a two-CPU job.
    small = view("small", node("n1", {"CPU": 1}), node("n2", {"CPU": 1}))
    assert nofit(choose(job({"CPU": 2}), [small])).infeasible
    # A GPU on one node and free CPUs on another do not make a fit.
    mixed = view("mixed", node("n1", {"CPU": 4}), node("n2", {"CPU": 1, "GPU": 1}, {"CPU": 1}))
    assert nofit(choose(job({"CPU": 1, "GPU": 1}), [mixed])).infeasible is False
    p = placed(choose(job({"CPU": 1, "GPU": 1}), [view("mixed", node("n1", {"CPU": 4}), node("n2", {"CPU": 1, "GPU": 1}))]))
    assert p.node_id == "n2"


def test_memory_is_compared_in_bytes() -> None:
    c = view("c", node("n1", {"CPU": 4, "memory": 4 * GIB}, {"memory": 3 * GIB}))
    assert needs(job({"memory": 2})) == {"memory": 2 * GIB}
    r = nofit(choose(job({"CPU": 1, "memory": 2}), [c]))
    assert not r.infeasible
    assert placed(choose(job({"CPU": 1, "memory": 1}), [c])).cluster == "c"
    assert nofit(choose(job({"CPU": 1, "memory": 5}), [c])).infeasible


def test_cluster_tags_filter() -> None:
    views = [cpu_cluster(), gpu_cluster()]
    assert placed(choose(job(cluster_tags=frozenset({"gpu"})), views)).cluster == "gpu_cluster"
    r = nofit(choose(job(cluster_tags=frozenset({"gpu", "cpu"})), views))
    assert r.infeasible
    assert "lacks tags" in r.explanation


def test_down_clusters_are_ruled_out_degraded_are_used_with_a_penalty() -> None:
    assert nofit(choose(job(), [cpu_cluster(health=DOWN)])).infeasible is False
    ok = placed(choose(job(), [cpu_cluster()]))
    deg = placed(choose(job(), [cpu_cluster(health=DEGRADED)]))
    assert deg.cluster == "cpu_cluster" and deg.score < ok.score
    # An identical healthy cluster beats a degraded one.
    a = view("a", node("a1", {"CPU": 2}), health=DEGRADED)
    b = view("b", node("b1", {"CPU": 2}))
    assert placed(choose(job(), [a, b])).cluster == "b"


def test_infeasible_versus_no_fit_now() -> None:
    views = [cpu_cluster(used_cpu=2), gpu_cluster(used_cpu=2)]
    busy = nofit(choose(job({"CPU": 1}), views))
    assert not busy.infeasible and busy.explanation.startswith("no cluster fits now")
    huge = nofit(choose(job({"CPU": 64}), views))
    assert huge.infeasible and huge.explanation.startswith("infeasible")
    custom = nofit(choose(job({"A100": 1}), views))
    assert custom.infeasible


def test_never_probed_cluster_prevents_infeasible() -> None:
    never = view("fresh", health=UNKNOWN)
    r = nofit(choose(job({"CPU": 64}), [cpu_cluster(), never]))
    assert not r.infeasible
    assert "fresh: never probed" in r.explanation


def test_pack_and_spread_choose_different_nodes() -> None:
    c = view("c", node("empty", {"CPU": 4}), node("half", {"CPU": 4}, {"CPU": 2}))
    assert placed(choose(job({"CPU": 1}), [c], "spread")).node_id == "empty"
    assert placed(choose(job({"CPU": 1}), [c], "pack")).node_id == "half"


def test_weight_and_prefer_affect_the_score() -> None:
    def two(**b: Any) -> list[ClusterView]:
        return [view("a", node("a1", {"CPU": 2})), view("b", node("b1", {"CPU": 2}), **b)]

    base = placed(choose(job(), two()))
    heavy = placed(choose(job(), two(weight=2.0)))
    light = placed(choose(job(), two(weight=0.5)))
    preferred = placed(choose(job(), two(prefer=True)))
    assert heavy.cluster == "b" and heavy.score > base.score
    assert light.cluster == "a"
    assert preferred.cluster == "b" and preferred.score > base.score


def test_exclude_set() -> None:
    views = [cpu_cluster(), gpu_cluster()]
    p = placed(choose(job(), views, exclude=frozenset({"cpu_cluster"})))
    assert p.cluster == "gpu_cluster"
    assert "cpu_cluster: excluded" in p.explanation
    r = nofit(choose(job(), views, exclude=frozenset({"cpu_cluster", "gpu_cluster"})))
    assert not r.infeasible


@pytest.mark.parametrize(("raw", "camel"), [
    ("GPU_fake", "GPUFake"),
    ("object_store_memory", "objectStoreMemory"),
    ("CPU", "CPU"),
    ("memory", "memory"),
    ("A100", "A100"),
    ("my_custom_res", "myCustomRes"),
])
def test_ray_name(raw: str, camel: str) -> None:
    assert ray_name(raw) == camel


def test_custom_resources_use_camel_cased_names() -> None:
    c = view("fake", node("f1", {"CPU": 2, "GPUFake": 2}))
    assert needs(job({"CPU": 1, "GPU_fake": 1})) == {"CPU": 1, "GPUFake": 1}
    assert placed(choose(job({"CPU": 1, "GPU_fake": 1}), [c])).cluster == "fake"
    assert nofit(choose(job({"CPU": 1, "GPU_fake": 3}), [c])).infeasible


def test_explanation_mentions_each_cluster() -> None:
    views = [cpu_cluster(), gpu_cluster(used_cpu=2), view("gone", node("x", {"CPU": 8}), health=DOWN),
             view("fresh", health=UNKNOWN), view("tiny", node("t", {"CPU": 0.5})),
             view("tagged", node("t", {"CPU": 8}), tags=frozenset({"other"}))]
    p = placed(choose(job({"CPU": 1}), views))
    for v in views:
        assert f"{v.name}:" in p.explanation


def test_has_spare_capacity() -> None:
    assert has_spare_capacity([cpu_cluster()])
    assert not has_spare_capacity([cpu_cluster(used_cpu=2)])
    assert not has_spare_capacity([cpu_cluster(used_cpu=1.5)])  # half a CPU is not a whole unit
    assert has_spare_capacity([cpu_cluster(used_cpu=2), gpu_cluster(used_cpu=2)])  # free GPUs
    assert not has_spare_capacity([cpu_cluster(health=DOWN)])
    assert has_spare_capacity([cpu_cluster(health=DEGRADED)])
    assert not has_spare_capacity([view("fresh", health=UNKNOWN)])
    assert not has_spare_capacity([])
    # Free memory alone is no reason to take another job.
    mem = view("m", node("m1", {"CPU": 1, "memory": 8 * GIB, "objectStoreMemory": GIB}, {"CPU": 1}))
    assert not has_spare_capacity([mem])


def test_explanation_over_many_clusters_groups_them() -> None:
    """Past a dozen clusters the explanation counts each kind and names the first few
    (the best scores among those that fit), so a decision over a thousand stays one line."""
    views = [view(f"c{i:03}", node(f"n{i}", {"CPU": 8}, {"CPU": i / 100})) for i in range(200)]
    views += [view("dead", node("d", {"CPU": 8}), health=DOWN)]
    views += [view(f"full{i}", node(f"f{i}", {"CPU": 1}, {"CPU": 1})) for i in range(5)]
    p = placed(choose(job({"CPU": 1}), views))
    assert p.cluster == "c000"
    assert "fits 200: c000: fits" in p.explanation and "and 197 more" in p.explanation
    assert "not up 1: dead: down" in p.explanation
    assert "busy 5: full0: busy" in p.explanation and "and 2 more" in p.explanation
    assert len(p.explanation) < 800


def test_verdicts_are_kept_per_view_and_shape() -> None:
    """A view answers each shape of job once; a job of another shape, or a new view, asks again."""
    c = cpu_cluster()
    first = placed(choose(job({"CPU": 1}), [c]))
    assert len(c.verdicts) == 1
    assert placed(choose(job({"CPU": 1}), [c])) == first
    choose(job({"CPU": 2}), [c])
    assert len(c.verdicts) == 2
    assert nofit(choose(job({"CPU": 1}), [cpu_cluster(used_cpu=2)]))
