"""Placement: which cluster and node a job goes to, and why none when none fits."""

from __future__ import annotations

from typing import Any, Mapping

import pytest

from scheduler_daemon.clusters import ClusterView, HealthState, Node, ray_name
from scheduler_daemon.jobs import GIB, Job
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producers.schema import entrypoint_refusal
from scheduler_daemon import placement
from scheduler_daemon.placement import NoFit, Placement, Placer, choose, has_spare_capacity, needs
from scheduler_daemon.settings import ClusterConfig

UP, DEGRADED, DOWN, UNKNOWN = HealthState.UP, HealthState.DEGRADED, HealthState.DOWN, HealthState.UNKNOWN


def job(resources: Mapping[str, float] | None = None, entrypoint: str = "echo", **kw: Any) -> Job:
    return Job(submission_id="s1", job_id="j1", entrypoint=entrypoint,
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


def test_the_placer_judges_a_cluster_again_only_once_its_view_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each cluster is judged once per shape of job; afterwards only the clusters whose view
    changed (a probe with new numbers, a reservation, a health change) are judged again."""
    judged: list[str] = []
    real = placement._verdict
    monkeypatch.setattr(placement, "_verdict", lambda v, *a: judged.append(v.name) or real(v, *a))
    views = [view(f"c{i}", node(f"n{i}", {"CPU": 4})) for i in range(50)]
    placer = Placer("spread", views)
    placed(placer.choose(job({"CPU": 1})))
    assert len(judged) == 50
    placed(placer.choose(job({"CPU": 1})))
    placer.update(view("c7", node("n7", {"CPU": 4})))  # a new probe, the same numbers
    placed(placer.choose(job({"CPU": 1})))
    assert len(judged) == 50
    placer.update(view("c7", node("n7", {"CPU": 4}, {"CPU": 3})))
    placer.update(view("c9", node("n9", {"CPU": 4}), health=DOWN))
    placed(placer.choose(job({"CPU": 1})))
    assert sorted(judged[50:]) == ["c7", "c9"]
    placed(placer.choose(job({"CPU": 2})))  # a new shape: every cluster once
    assert len(judged) == 102


def test_the_placer_follows_the_best_cluster_as_capacity_moves() -> None:
    views = [view(f"c{i}", node(f"n{i}", {"CPU": 8}, {"CPU": i})) for i in range(20)]
    placer = Placer("spread", views)
    assert placed(placer.choose(job())).cluster == "c0"
    placer.update(view("c0", node("n0", {"CPU": 8}, {"CPU": 8})))
    assert placed(placer.choose(job())).cluster == "c1"
    placer.update(view("c19", node("n19", {"CPU": 8})))
    assert placed(placer.choose(job())).cluster == "c19"
    assert placer.has_spare()
    for i in range(20):
        placer.update(view(f"c{i}", node(f"n{i}", {"CPU": 8}, {"CPU": 8})))
    assert not placer.has_spare()
    r = nofit(placer.choose(job()))
    assert not r.infeasible and "busy 20:" in r.explanation


# ---- the placer against a plain look at every cluster ----------------------------------------

def reference(job_: Job, views: list[ClusterView], strategy: str, exclude: frozenset[str]) -> tuple[Any, ...]:
    """What a decision must be, from every cluster's verdict computed directly."""
    need = needs(job_)
    candidates, kinds = [], []
    for v in views:
        cfg = v.config
        if not job_.cluster_tags <= cfg.tags:
            kinds.append("lacks tags")
            continue
        if entrypoint_refusal(job_.command, cfg.allowed_script_dirs, cfg.allowed_interpreters):
            kinds.append("refuses it")
            continue
        kind, score, spares, node_id, _ = placement._verdict(v, need, strategy)
        if kind in ("fits", "busy") and v.name in exclude:
            kind = "excluded"
        kinds.append(kind)
        if kind == "fits":
            candidates.append((spares, score, v.name, node_id))
    fitting = {c[2]: c for c in candidates}
    if job_.preferred_cluster in fitting:
        _, score, name, node_id = fitting[job_.preferred_cluster]
        return ("placed", name, node_id, score)
    if candidates:
        _, score, name, node_id = max(candidates)
        return ("placed", name, node_id, score)
    infeasible = not {"fits", "busy", "health", "excluded", "never"} & set(kinds)
    return ("nofit", infeasible)


def outcome(decision: Placement | NoFit) -> tuple[Any, ...]:
    if isinstance(decision, Placement):
        return ("placed", decision.cluster, decision.node_id, decision.score)
    return ("nofit", decision.infeasible)


_cluster_st = st.tuples(
    st.lists(st.tuples(st.sampled_from([1.0, 2.0, 4.0, 8.0]), st.sampled_from([0.0, 1.0, 2.0])), min_size=0, max_size=3),
    st.sampled_from([0.0, 0.5, 1.0]),  # fraction of each node's CPUs in use
    st.sampled_from([UP, UP, DEGRADED, DOWN, UNKNOWN]),
)


def _sim_view(i: int, spec: tuple[Any, ...], tags: frozenset[str], locked: bool) -> ClusterView:
    shapes, frac, health = spec
    nodes = tuple(node(f"n{i}.{k}", {"CPU": cpu, **({"GPU": gpu} if gpu else {})}, {"CPU": cpu * frac})
                  for k, (cpu, gpu) in enumerate(shapes))
    cfg = ClusterConfig(f"c{i:02}", f"http://c{i}:8265", tags=tags, weight=1.0 + (i % 3) / 2,
                        allowed_script_dirs=("/opt/jobs/",) if locked else ())
    return ClusterView(cfg, health, nodes)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 30), data=st.data())
def test_the_placer_decides_as_a_look_at_every_cluster_would(n: int, data: st.DataObject) -> None:
    """Random fleets, then random changes and jobs: after each change the placer's decision
    is the one a fresh look at every cluster gives."""
    strategy = data.draw(st.sampled_from(["spread", "pack"]))
    tags = [data.draw(st.sampled_from([frozenset(), frozenset({"gpu"}), frozenset({"gpu", "big"})])) for _ in range(n)]
    locked = [data.draw(st.booleans()) and i % 4 == 0 for i in range(n)]
    views = [_sim_view(i, data.draw(_cluster_st), tags[i], locked[i]) for i in range(n)]
    placer = Placer(strategy, views)
    for _ in range(data.draw(st.integers(1, 12))):
        if data.draw(st.booleans()):
            i = data.draw(st.integers(0, n - 1))
            views[i] = _sim_view(i, data.draw(_cluster_st), tags[i], locked[i])
            placer.update(views[i])
        j = job({"CPU": data.draw(st.sampled_from([0.5, 1.0, 2.0, 6.0])),
                 **({"GPU": 1.0} if data.draw(st.booleans()) else {})},
                entrypoint=data.draw(st.sampled_from(["echo", "/opt/jobs/a.sh"])),
                cluster_tags=data.draw(st.sampled_from([frozenset(), frozenset({"gpu"})])),
                preferred_cluster=data.draw(st.sampled_from([None, "c00", "c03", "nowhere"])))
        exclude = frozenset(data.draw(st.lists(st.sampled_from([f"c{i:02}" for i in range(n)]), max_size=3)))
        decision = placer.choose(j, exclude)
        assert outcome(decision) == reference(j, views, strategy, exclude), decision.explanation
        if n <= placement.EXPLAIN_EACH_UP_TO:
            assert decision.explanation == choose(j, views, strategy, exclude).explanation
