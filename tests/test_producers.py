"""The Python producer helper (seed 000's API) against the real RabbitMQ, a real daemon and fake
Ray dashboards. The synchronous API blocks, so the tests call it from worker threads
(`asyncio.to_thread`) while the daemon and the fakes run on the test's event loop.

Pointing the helper at a test's daemon: `initialize_scheduler_environment(path)` with a YAML
holding amqp_url, http_addr and the test's exchange names (see `write_config`)."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest
import yaml

import producers
from fakeray import GIB, FakeCluster, FakeServer
from producers import aio
from producers import core
from scheduler_daemon.settings import Settings
from support import Events, make_settings, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")

ROOT = Path(__file__).resolve().parents[1]
RMCS_ENV = ("RMCS_AMQP_URL", "RMCS_HTTP_ADDR", "RMCS_INTAKE_EXCHANGE", "RMCS_INTAKE_ROUTING_KEY",
            "RMCS_EVENTS_EXCHANGE", "RMCS_CONNECT_TIMEOUT_S", "RMCS_REQUEST_TIMEOUT_S")


def write_config(path: Path, s: Settings, **extra: Any) -> Path:
    """The helper's settings for a test daemon."""
    path.write_text(yaml.safe_dump({
        "amqp_url": s.amqp_url, "http_addr": s.http_addr, "events_exchange": s.events_exchange,
        "intake_exchange": s.intake_exchange, "intake_routing_key": s.intake_routing_key, **extra}))
    return path


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking helper function off the event loop the daemon runs on."""
    return await asyncio.to_thread(fn, *args, **kwargs)


@dataclass
class Rig:
    settings: Settings
    config: Path
    ev: Events
    cpu: FakeCluster
    gpu: FakeCluster
    tiny: FakeCluster

    def ray_job(self, submission_id: str) -> Any:
        for cluster in (self.cpu, self.gpu, self.tiny):
            if submission_id in cluster.jobs:
                return cluster, cluster.jobs[submission_id]
        return None, None


@pytest.fixture(scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    tmp = tmp_path_factory.mktemp("producers")
    s = make_settings(tmp, window_size=4)
    cpu = FakeCluster("cpu_cluster", nodes={"c1": {"CPU": 8, "memory": 64 * GIB}}, duration_s=0.3)
    gpu = FakeCluster("gpu_cluster", nodes={"g1": {"CPU": 32, "GPU": 4, "memory": 256 * GIB}}, duration_s=0.3)
    tiny = FakeCluster("tiny", nodes={"t1": {"CPU": 1, "slot": 1, "memory": 4 * GIB}}, duration_s=0.3)
    servers = [FakeServer([c]) for c in (cpu, gpu, tiny)]
    for server in servers:
        await server.start()
    configs = (cpu.config(tags=frozenset({"cpu"})), gpu.config(tags=frozenset({"gpu"})), tiny.config())
    saved = {k: os.environ.pop(k) for k in RMCS_ENV if k in os.environ}
    try:
        async with running_daemon(s, configs), Events(s, "#") as ev:
            config = write_config(tmp / "rmcs.yaml", s)
            await call(producers.initialize_scheduler_environment, config)
            yield Rig(s, config, ev, cpu, gpu, tiny)
            await call(producers.shutdown_scheduler_environment)
    finally:
        os.environ.update(saved)
        for server in servers:
            await server.stop()


async def reinit(rig: Rig) -> None:
    await call(producers.initialize_scheduler_environment, rig.config)


# ---- no broker needed ----------------------------------------------------------------------------

ALLOWED_IMPORTS = {"aio_pika", "aiohttp", "orjson", "json", "yaml", "aiormq", "producers"}


def test_producers_import_nothing_but_the_allowed_libraries() -> None:
    stdlib = set(sys.stdlib_module_names)
    for path in sorted((ROOT / "producers").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                top = name.split(".")[0]
                assert top in stdlib or top in ALLOWED_IMPORTS, f"{path.name} imports {name}"
    code = ("import sys, producers, producers.aio; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('scheduler_daemon', 'ray')); "
            "assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_configuration_sources_and_precedence(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    assert producers.load_config(environ=env) == producers.ProducerConfig(source="defaults")
    cfg = producers.load_config(environ=env)
    assert (cfg.amqp_url, cfg.http_addr, cfg.http_base) == (
        "amqp://guest:guest@127.0.0.1:5672/", "127.0.0.1:8600", "http://127.0.0.1:8600")
    flat = tmp_path / "rmcs.yaml"
    flat.write_text("amqp_url: amqp://app:s3cret@mq.example:5673/prod\nhttp_addr: 10.0.0.5:8600\n"
                    "events_exchange: x.events\nwindow_size: 8\n")  # the daemon's own keys are ignored
    cfg = producers.load_config(flat, environ=env)
    assert (cfg.events_exchange, cfg.intake_exchange, cfg.http_base) == ("x.events", "rmcs.jobs", "http://10.0.0.5:8600")
    assert "s3cret" not in repr(cfg) and "mq.example:5673/prod" in repr(cfg)
    env = {"RMCS_HTTP_ADDR": "127.0.0.1:9000"}  # the environment wins over the file, as for the daemon
    assert producers.load_config(flat, environ=env).http_addr == "127.0.0.1:9000"
    assert producers.load_config(flat, environ=env, http_addr="h:1").http_addr == "h:1"  # code wins over both
    clusters = tmp_path / "clusters.yaml"  # seed 000's clusters file: broker and API from env/defaults
    clusters.write_text("clusters:\n  cpu_cluster:\n    head_address: 1.2.3.4:10001\n    prefer: true\n")
    assert producers.load_config(clusters, environ={}).amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    for bad in ("amqp_url: http://x/\n", "http_addr: nonsense\n", "connect_timeout_s: -1\n", "- a list\n"):
        flat.write_text(bad)
        with pytest.raises(ValueError):
            producers.load_config(flat, environ={})
    with pytest.raises(FileNotFoundError):
        producers.load_config(tmp_path / "missing.yaml", environ={})


def test_status_mapping() -> None:
    expected = {"ACCEPTED": "PENDING", "DISPATCHED": "PENDING", "RETRYING": "PENDING", "RUNNING": "RUNNING",
                "SUCCEEDED": "SUCCEEDED", "FAILED": "FAILED", "LOST": "FAILED", "REJECTED": "FAILED",
                "EXPIRED": "FAILED", "STOPPED": "STOPPED", "CANCELLED": "STOPPED"}
    assert {state: producers.ray_status(state, True) for state in expected} == expected
    assert producers.ray_status("FAILED", False) == producers.ray_status("LOST", False) == "PENDING"  # a retry follows
    assert producers.ray_status("WHATEVER") == producers.ray_status(None) == "UNKNOWN"


def test_relative_paths_are_a_value_error() -> None:
    """Seed 000: `submit_job("python script.py")` is a ValueError; checked before any I/O."""
    for entrypoint in ("python script.py", "python scripts/train.py --x 1", "bash ./run.sh",
                       "python /opt/../etc/x.py", "bin/tool --flag", "", "python 'unbalanced"):
        with pytest.raises(ValueError):
            producers.submit_job(entrypoint)
    for bad in ({"submission_id": "has space"}, {"metadata": {"n": 1}}, {"priority": 10}, {"tags": "one"},
                {"resource_requirements": {"CPU": -1}}, {"max_retries": -1}, {"queue_timeout_s": 0}):
        with pytest.raises(ValueError):
            producers.submit_job("python /home/user/script.py", **bad)
    body, prio = core.build_job("python -c 'import a.b; print(1)' /data/x.csv", priority="high", tags=["t"])
    assert body["submission_id"].startswith("sub_") and prio == 9 and body["priority"] == "HIGH"


# ---- against the broker, the daemon and fake clusters ---------------------------------------------

async def test_broker_unreachable_is_a_runtime_error_without_the_password(rig: Rig, tmp_path: Path) -> None:
    dead = write_config(tmp_path / "dead.yaml", rig.settings, amqp_url="amqp://app:s3cret@127.0.0.1:1/",
                        connect_timeout_s=3)
    try:
        with pytest.raises(RuntimeError) as err:
            await call(producers.initialize_scheduler_environment, dead)
        assert "cannot reach the RabbitMQ broker at amqp://127.0.0.1:1/" in str(err.value)
        assert "s3cret" not in str(err.value) and "app" not in str(err.value)
        with pytest.raises(RuntimeError, match="cannot reach the RabbitMQ broker") as err:
            await call(producers.submit_job, "python /home/user/script.py")
        assert "s3cret" not in str(err.value)
        # Not initialised, lazy initialisation from the environment fails: RuntimeError too.
        await call(producers.shutdown_scheduler_environment)
        os.environ["RMCS_AMQP_URL"] = "amqp://app:s3cret@127.0.0.1:1/"
        with pytest.raises(RuntimeError, match="not initialised and lazy initialisation failed") as err:
            await call(producers.submit_job, "python /home/user/script.py")
        assert "s3cret" not in str(err.value)
        os.environ["RMCS_AMQP_URL"] = "nonsense://"
        with pytest.raises(RuntimeError, match="not initialised"):
            await call(producers.submit_job, "python /home/user/script.py")
    finally:
        os.environ.pop("RMCS_AMQP_URL", None)
        await reinit(rig)


async def test_lazy_initialisation_from_the_environment(rig: Rig) -> None:
    s = rig.settings
    env = {"RMCS_AMQP_URL": s.amqp_url, "RMCS_HTTP_ADDR": s.http_addr, "RMCS_EVENTS_EXCHANGE": s.events_exchange,
           "RMCS_INTAKE_EXCHANGE": s.intake_exchange, "RMCS_INTAKE_ROUTING_KEY": s.intake_routing_key}
    await call(producers.shutdown_scheduler_environment)
    os.environ.update(env)
    try:
        job = await call(producers.submit_job, "python /home/user/script.py")  # no initialisation call
        assert await call(producers.wait_for_all_jobs, [job], 1, 20) is True
        assert await call(producers.get_job_status, job) == "SUCCEEDED"
    finally:
        for key in env:
            os.environ.pop(key, None)
        await reinit(rig)


async def test_quick_start_submit_wait_status_info(rig: Rig) -> None:
    """Seed 000's quick start: submit, wait, status; plus get_job_info with transitions and logs."""
    entrypoint = "python /absolute/path/to/script.py --arg1 value1 --arg2 value2"
    submission_id = await call(producers.submit_job, entrypoint=entrypoint, job_id="my_job_001",
                               preferred_cluster="gpu_cluster",
                               resource_requirements={"CPU": 4, "GPU": 1, "memory": 16.0})
    assert submission_id.startswith("sub_")
    assert await call(producers.wait_for_all_jobs, [submission_id], check_interval=10) is True
    assert await call(producers.get_job_status, submission_id, "gpu_cluster") == "SUCCEEDED"
    assert await call(producers.get_job_status, submission_id, "no_such_cluster") == "SUCCEEDED"  # ignored
    assert await call(producers.get_job_status, submission_id) == "SUCCEEDED"
    info = await call(producers.get_job_info, submission_id, "gpu_cluster")
    assert info["status"] == "SUCCEEDED" and info["state"] == "SUCCEEDED" and info["final"] is True
    assert (info["cluster"], info["attempt"], info["job_id"]) == ("gpu_cluster", 1, "my_job_001")
    assert [t["state"] for t in info["transitions"]] == ["ACCEPTED", "DISPATCHED", "RUNNING", "SUCCEEDED"]
    assert info["logs"] == f"fake ray gpu_cluster: running {entrypoint}\n"
    cluster, ray_job = rig.ray_job(submission_id)
    assert cluster is rig.gpu and ray_job.need == {"CPU": 4.0, "GPU": 1.0, "memory": 16.0 * GIB}
    # Unknown jobs; an explicit submission id is kept, and a second use of it is refused.
    assert await call(producers.get_job_status, "never-submitted") == "UNKNOWN"
    assert await call(producers.get_job_info, "never-submitted") is None
    mine = sid("explicit")
    assert await call(producers.submit_job, "/bin/true", submission_id=mine, priority="HIGH") == mine
    await call(producers.wait_for_all_jobs, [mine], 1, 20)
    with pytest.raises(RuntimeError, match="already exists"):
        await call(producers.submit_job, "/bin/true", submission_id=mine)


async def test_clusters_jobs_and_logs_as_seeds_000_and_002_list_them(rig: Rig) -> None:
    """Seed 000's `get_unified_scheduler().list_clusters()`; seed 002's `list_jobs()` and
    `get_job_logs()`."""
    for _ in range(50):  # the scheduler reports its clusters every second
        clusters = await call(producers.get_unified_scheduler().list_clusters)
        if clusters:
            break
        await asyncio.sleep(0.1)
    assert {c["name"] for c in clusters} == {"cpu_cluster", "gpu_cluster", "tiny"}
    assert {c["name"] for c in await call(producers.list_clusters)} == {c["name"] for c in clusters}
    assert all({"health", "total", "available"} <= set(c) for c in clusters), clusters[0]
    tag = sid("listed")
    jobs = [await call(producers.submit_job, f"/bin/echo {i}", tags=[tag]) for i in range(3)]
    await call(producers.wait_for_all_jobs, jobs, 1, 20)
    listed = await call(producers.list_jobs, tag=tag)
    assert [j["submission_id"] for j in listed] == jobs and all(j["state"] == "SUCCEEDED" for j in listed)
    assert [j["submission_id"] for j in await call(producers.list_jobs, tag=tag, limit=2)] == jobs[:2]
    assert await call(producers.list_jobs, tag=tag, state="FAILED") == []
    assert await call(producers.get_job_logs, jobs[1]) == "fake ray " + listed[1]["cluster"] + ": running /bin/echo 1\n"
    with pytest.raises(RuntimeError, match="no logs for job"):
        await call(producers.get_job_logs, "never-submitted")
    assert [j["submission_id"] for j in await aio.list_jobs(tag=tag)] == jobs
    assert await aio.get_job_logs(jobs[0]) == await call(producers.get_job_logs, jobs[0])
    assert {c["name"] for c in await aio.list_clusters()} == {c["name"] for c in clusters}
    # Seed 004's delete: a job that ended goes from its cluster and from the history.
    cluster, _ = rig.ray_job(jobs[0])
    assert await call(producers.delete_job, jobs[0]) is True
    assert jobs[0] not in cluster.jobs
    assert await call(producers.get_job_info, jobs[0]) is None
    assert await call(producers.get_job_status, jobs[0]) == "UNKNOWN"
    assert [j["submission_id"] for j in await call(producers.list_jobs, tag=tag)] == jobs[1:]
    assert await call(producers.delete_job, "never-submitted") is False
    running = await call(producers.submit_job, "/bin/sleep 60")
    await rig.ev.wait_for(lambda: "RUNNING" in rig.ev.states(running), 10)
    with pytest.raises(RuntimeError, match="stop it first"):
        await aio.delete_job(running)
    assert await call(producers.stop_job, running) is True


async def test_batch_of_five_with_tags_and_timeout(rig: Rig) -> None:
    """Seed 000, batch submission: five jobs with tags, then wait_for_all_jobs with a timeout."""
    def workflow() -> list[str]:
        jobs = []
        for i in range(5):
            entrypoint = f"python /path/to/train.py --job_id job_{i}"
            submission_id = producers.submit_job(
                entrypoint=entrypoint,
                job_id=f"batch_job_{i}",
                resource_requirements={"CPU": 2, "memory": 8.0},
                tags=["batch_training", f"iteration_{i}"]
            )
            jobs.append(submission_id)
            print(f"submitted job {i}: {submission_id}")
        try:
            producers.wait_for_all_jobs(jobs, check_interval=10, timeout=3600)
            print("all batch jobs done")
        except RuntimeError as e:
            raise AssertionError(f"some jobs failed: {e}") from e
        return jobs

    jobs = await call(workflow)
    await rig.ev.wait_final(jobs, 10)  # the test's consumer may get the last events after the waiter
    for i, job in enumerate(jobs):
        assert rig.ev.states(job)[-1] == "SUCCEEDED"
        assert rig.ev.of(job)[-1]["tags"] == ["batch_training", f"iteration_{i}"]
        assert rig.ray_job(job)[1].entrypoint == f"python /path/to/train.py --job_id job_{i}"


async def test_custom_runtime_environment(rig: Rig, tmp_path: Path) -> None:
    """Seed 000, custom runtime environment: passed through to Ray on the chosen cluster. Its
    `working_dir` is a directory on the submitting machine (seed 002: "automatically zipped and
    uploaded"): the helper uploads it to rmcs, the job names its package, and the daemon puts the
    package on the cluster before the POST."""
    project = tmp_path / "project"
    (project / "tmp").mkdir(parents=True)
    (project / "main.py").write_text("print('training')\n")
    (project / "train.log").write_text("excluded\n")
    (project / "tmp" / "scratch").write_text("excluded\n")
    custom_env = {
        "pip": [
            "torch==2.0.0",
            "torchvision==0.15.0",
            "transformers==4.30.0"
        ],
        "env_vars": {
            "CUDA_VISIBLE_DEVICES": "0,1",
            "PYTHONPATH": "/home/user/code:$PYTHONPATH"
        },
        "working_dir": str(project),
        "excludes": ["*.log", "tmp/*"]
    }

    def workflow() -> str:
        submission_id = producers.submit_job(
            entrypoint="python main.py",  # relative: in its working_dir
            runtime_env=custom_env,
            job_id="torch_training",
            preferred_cluster="gpu_cluster",
            resource_requirements={"CPU": 16, "GPU": 2, "memory": 64.0}
        )
        producers.wait_for_all_jobs([submission_id], timeout=30)
        return submission_id

    submission_id = await call(workflow)
    cluster, ray_job = rig.ray_job(submission_id)
    assert cluster is rig.gpu
    for key, value in custom_env.items():
        if key != "working_dir":
            assert ray_job.runtime_env[key] == value
    uri = ray_job.runtime_env["working_dir"]
    assert uri.startswith("gcs://_ray_pkg_") and uri[6:] in rig.gpu.packages
    with zipfile.ZipFile(io.BytesIO(rig.gpu.packages[uri[6:]])) as z:
        assert z.namelist() == ["main.py"] and z.read("main.py") == b"print('training')\n"
    # The same directory again: the same package, not uploaded again.
    again = await call(lambda: producers.submit_job(entrypoint="python main.py", runtime_env=custom_env,
                                                    preferred_cluster="gpu_cluster"))
    await rig.ev.wait_final([again], 30)
    assert rig.ray_job(again)[1].runtime_env["working_dir"] == uri
    assert rig.gpu.requests["PUT /api/packages"] == 1, rig.gpu.requests


async def test_jobs_in_sequence_with_dependencies(rig: Rig) -> None:
    """Seed 000, dependencies: each job is submitted after the previous one ended."""
    def workflow() -> tuple[str, str, str]:
        preprocess_id = producers.submit_job(
            entrypoint="python /path/to/preprocess.py --input data.csv",
            job_id="preprocess",
            tags=["preprocessing"]
        )
        producers.wait_for_all_jobs([preprocess_id])
        train_id = producers.submit_job(
            entrypoint="python /path/to/train.py --model bert",
            job_id="train",
            metadata={"depends_on": preprocess_id},
            tags=["training"]
        )
        producers.wait_for_all_jobs([train_id])
        eval_id = producers.submit_job(
            entrypoint="python /path/to/evaluate.py --model /path/to/output/model.pt",  # path made absolute
            job_id="evaluate",
            metadata={"depends_on": train_id},
            tags=["evaluation"]
        )
        producers.wait_for_all_jobs([eval_id])
        return preprocess_id, train_id, eval_id

    pre, train, evaluate = await call(workflow)
    chain = [rig.ray_job(j)[1] for j in (pre, train, evaluate)]
    assert chain[1].metadata["depends_on"] == pre and chain[2].metadata["depends_on"] == train
    assert chain[0].ended_at <= chain[1].submitted_at and chain[1].ended_at <= chain[2].submitted_at


async def test_pipeline_helper_submits_a_dag_in_one_call(rig: Rig) -> None:
    """depends_on through the helper: `submit_pipeline` sends every stage at once, dependents
    first would be fine too; the daemon holds each until its dependencies SUCCEEDED."""
    def workflow() -> dict[str, str]:
        ids = producers.submit_pipeline({
            "prep": {"entrypoint": "python /path/to/preprocess.py", "tags": ["pipe"]},
            "train": {"entrypoint": "python /path/to/train.py", "after": ["prep"]},
            "report": {"entrypoint": "python /path/to/report.py", "after": ["train"], "run_timeout_s": 60},
        })
        producers.wait_for_all_jobs(list(ids.values()))
        return ids

    ids = await call(workflow)
    prep, train, report = (rig.ray_job(ids[n])[1] for n in ("prep", "train", "report"))
    assert prep.ended_at <= train.submitted_at and train.ended_at <= report.submitted_at
    info = await call(producers.get_job_info, ids["report"])
    assert info is not None and "WAITING" in str(info)


async def test_failing_job_makes_wait_raise(rig: Rig) -> None:
    good = await call(producers.submit_job, "python /path/to/train.py")
    bad = await call(producers.submit_job, "python /path/to/fail_job.py", tags=["doomed"])
    with pytest.raises(RuntimeError) as err:
        await call(producers.wait_for_all_jobs, [good, bad], check_interval=10, timeout=30)
    assert bad in str(err.value) and "FAILED" in str(err.value) and good not in str(err.value)
    assert await call(producers.get_job_status, bad) == "FAILED"
    assert await call(producers.get_job_status, good) == "SUCCEEDED"
    # A job the daemon rejects (fits no cluster) fails the wait as well.
    huge = await call(producers.submit_job, "python /path/to/train.py", resource_requirements={"CPU": 1000})
    with pytest.raises(RuntimeError, match=f"{huge} REJECTED"):
        await call(producers.wait_for_all_jobs, [huge], timeout=30)
    assert await call(producers.get_job_status, huge) == "FAILED"


async def test_timeout_then_stop(rig: Rig) -> None:
    long = await call(producers.submit_job, "/bin/sleep 60", preferred_cluster="cpu_cluster")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=long):
        await call(producers.wait_for_all_jobs, [long], check_interval=10, timeout=1)
    assert 0.9 <= time.monotonic() - started < 6  # timeout=1, not check_interval=10
    await rig.ev.wait_for(lambda: "RUNNING" in rig.ev.states(long), 10)
    assert await call(producers.get_job_status, long) == "RUNNING"
    assert await call(producers.stop_job, long, "cpu_cluster") is True
    with pytest.raises(RuntimeError, match=f"{long} STOPPED"):
        await call(producers.wait_for_all_jobs, [long], timeout=10)
    assert await call(producers.get_job_status, long) == "STOPPED"
    assert await call(producers.stop_job, long) is False  # already ended


async def test_stop_a_queued_job_cancels_it(rig: Rig) -> None:
    holder = await call(producers.submit_job, "/bin/sleep 60", resource_requirements={"slot": 1})
    queued = await call(producers.submit_job, "/bin/sleep 60", resource_requirements={"slot": 1})
    await rig.ev.wait_for(lambda: "RUNNING" in rig.ev.states(holder) and "ACCEPTED" in rig.ev.states(queued), 10)
    assert await call(producers.get_job_status, queued) == "PENDING"
    info = await call(producers.get_job_info, queued)
    assert info["status"] == "PENDING" and info["state"] == "ACCEPTED" and info["logs"] is None
    assert await call(producers.stop_job, queued) is True
    assert await call(producers.stop_job, holder) is True
    await rig.ev.wait_final([holder, queued], 10)
    assert await call(producers.get_job_status, queued) == "STOPPED"
    assert rig.ev.states(queued)[-1] == "CANCELLED" and rig.ev.states(holder)[-1] == "STOPPED"
    assert rig.ray_job(queued) == (None, None)


async def test_wait_after_the_jobs_ended(rig: Rig) -> None:
    jobs = [await call(producers.submit_job, "python /path/to/train.py") for _ in range(3)]
    await rig.ev.wait_final(jobs, 20)
    await asyncio.sleep(0.3)  # let the daemon's status cache record them
    started = time.monotonic()
    assert await call(producers.wait_for_all_jobs, jobs, check_interval=10, timeout=10) is True
    assert time.monotonic() - started < 5  # not check_interval=10


async def test_wait_for_ten_jobs_returns_right_after_the_last_one_ends(rig: Rig) -> None:
    jobs = [await call(producers.submit_job, f"/bin/sleep 0.{3 + i % 5}", preferred_cluster="gpu_cluster")
            for i in range(10)]
    assert await call(producers.wait_for_all_jobs, jobs, check_interval=30, timeout=60) is True
    returned = time.time()
    # The test's own consumer of the events may get the last one a moment after the waiter did
    # (then the lag is negative); what matters is that the waiter is not later than it.
    await rig.ev.wait_final(jobs, 10)
    last_end = max(e["_recv"] for j in jobs for e in rig.ev.of(j) if e.get("final"))
    lag = returned - last_end
    print(f"wait_for_all_jobs returned {lag * 1000:.0f} ms after the last final event")
    assert lag < 5, lag  # not check_interval=30


async def test_wait_falls_back_to_polling_without_the_event_stream(rig: Rig, tmp_path: Path) -> None:
    job = await call(producers.submit_job, "python /path/to/train.py")
    blind = write_config(tmp_path / "blind.yaml", rig.settings, events_exchange="t.no-such-exchange")
    try:
        await call(producers.initialize_scheduler_environment, blind)
        started = time.monotonic()
        assert await call(producers.wait_for_all_jobs, [job], check_interval=0.2, timeout=20) is True
        assert time.monotonic() - started < 5
    finally:
        await reinit(rig)


async def test_ctrl_c_in_a_decorated_function_stops_its_jobs(rig: Rig) -> None:
    outside = await call(producers.submit_job, "/bin/sleep 1", preferred_cluster="cpu_cluster")
    submitted: list[str] = []

    @producers.graceful_shutdown_on_keyboard_interrupt
    def my_workflow() -> None:
        submitted.append(producers.submit_job("/bin/sleep 60", job_id="job1", resource_requirements={"slot": 1}))
        submitted.append(producers.submit_job("/bin/sleep 60", job_id="job2", resource_requirements={"slot": 1}))
        deadline = time.monotonic() + 10
        while producers.get_job_status(submitted[0]) != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.05)
        raise KeyboardInterrupt  # what Ctrl+C raises in the main thread

    def run() -> str:
        try:
            my_workflow()
        except KeyboardInterrupt:
            return "re-raised"
        return "returned"

    assert await call(run) == "re-raised"
    running, queued = submitted
    await rig.ev.wait_final([running, queued], 10)
    assert rig.ev.states(running)[-1] == "STOPPED" and rig.ev.states(queued)[-1] == "CANCELLED"
    await rig.ev.wait_final([outside], 10)
    assert rig.ev.states(outside)[-1] == "SUCCEEDED"  # not submitted by the decorated call


SIGINT_SCRIPT = """
import sys
import producers

producers.initialize_scheduler_environment(sys.argv[1])

@producers.graceful_shutdown_on_keyboard_interrupt
def my_workflow():
    job1 = producers.submit_job("/bin/sleep 60", job_id="job1", resource_requirements={"slot": 1})
    job2 = producers.submit_job("/bin/sleep 60", job_id="job2", resource_requirements={"slot": 1})
    print(job1, job2, flush=True)
    producers.wait_for_all_jobs([job1, job2])
    print("all jobs done")

my_workflow()
"""


async def test_real_ctrl_c_in_a_program_stops_running_and_queued_jobs(rig: Rig, tmp_path: Path) -> None:
    script = tmp_path / "workflow.py"
    script.write_text(textwrap.dedent(SIGINT_SCRIPT))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(rig.config), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
        # As a terminal's Ctrl+C finds it: a suite started in the background (`make test &`, nohup)
        # ignores SIGINT, and a Python started with SIGINT ignored never raises KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        running, queued = line.decode().split()
        await rig.ev.wait_for(lambda: "RUNNING" in rig.ev.states(running) and rig.ev.states(queued), 10)
        await asyncio.sleep(0.3)  # the program is now inside wait_for_all_jobs
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        except TimeoutError:
            proc.kill()
            _, stderr = await proc.communicate()
            raise AssertionError(f"the program did not exit after SIGINT; its stderr: {stderr.decode()[-3000:]}")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode != 0 and b"KeyboardInterrupt" in stderr, stderr.decode()
    assert b"stopping 2 job(s)" in stderr
    await rig.ev.wait_final([running, queued], 10)
    assert rig.ev.states(running)[-1] == "STOPPED" and rig.ev.states(queued)[-1] == "CANCELLED"
    assert await call(producers.get_job_status, running) == await call(producers.get_job_status, queued) == "STOPPED"


async def test_asyncio_flavour(rig: Rig) -> None:
    config = await aio.initialize_scheduler_environment(rig.config)
    assert config.events_exchange == rig.settings.events_exchange
    jobs = [await aio.submit_job("python /path/to/train.py", tags=["aio"], priority=i) for i in range(3)]
    assert await aio.wait_for_all_jobs(jobs, check_interval=10, timeout=20) is True
    assert [await aio.get_job_status(j, "whatever") for j in jobs] == ["SUCCEEDED"] * 3
    info = await aio.get_job_info(jobs[0])
    assert info is not None and info["state"] == "SUCCEEDED" and info["logs"].startswith("fake ray")
    with pytest.raises(ValueError):
        await aio.submit_job("python train.py")
    bad = await aio.submit_job("python /path/to/fail.py")
    with pytest.raises(RuntimeError, match=bad):
        await aio.wait_for_all_jobs([bad], timeout=20)
    slow = await aio.submit_job("/bin/sleep 60")
    with pytest.raises(TimeoutError):
        await aio.wait_for_all_jobs([slow], timeout=0.5)
    assert await aio.stop_job(slow) is True

    # Decorated coroutine: a cancellation (asyncio.run's way of delivering Ctrl+C) stops its jobs.
    submitted: list[str] = []
    started = asyncio.Event()

    @aio.graceful_shutdown_on_keyboard_interrupt
    async def workflow() -> None:
        submitted.append(await aio.submit_job("/bin/sleep 60", resource_requirements={"slot": 1}))
        submitted.append(await aio.submit_job("/bin/sleep 60", resource_requirements={"slot": 1}))
        started.set()
        await aio.wait_for_all_jobs(submitted)

    task = asyncio.create_task(workflow())
    await asyncio.wait_for(started.wait(), 10)
    await rig.ev.wait_for(lambda: "RUNNING" in rig.ev.states(submitted[0]), 10)
    task.cancel()
    await asyncio.wait({task}, timeout=10)
    assert task.cancelled(), "the cancellation reached the caller"
    await rig.ev.wait_final(submitted + [slow], 10)
    assert [rig.ev.states(j)[-1] for j in submitted] == ["STOPPED", "CANCELLED"]
    await aio.shutdown_scheduler_environment()
    await reinit(rig)


async def test_without_the_http_api_stop_goes_over_the_broker(rig: Rig, tmp_path: Path) -> None:
    job = await call(producers.submit_job, "/bin/sleep 60", preferred_cluster="cpu_cluster")
    await rig.ev.wait_for(lambda: "RUNNING" in rig.ev.states(job), 10)
    no_api = write_config(tmp_path / "no_api.yaml", rig.settings, http_addr="127.0.0.1:1")
    try:
        await call(producers.initialize_scheduler_environment, no_api)
        with pytest.raises(RuntimeError, match="cannot reach the rmcs daemon's HTTP API at http://127.0.0.1:1"):
            await call(producers.get_job_status, job)
        assert await call(producers.stop_job, job) is True  # control.stop, answered on its reply queue
        await rig.ev.wait_final([job], 10)
        assert rig.ev.states(job)[-1] == "STOPPED"
        assert [a["outcome"] for a in rig.ev.answers(job)] == ["stopping"]
    finally:
        await reinit(rig)
