"""The `rmcs` command line against a real daemon, fake Ray dashboards and the real RabbitMQ.

Commands run in-process (`main([...])` in a thread, with output streams of their own) so they
can run next to each other; a few run as the installed console script, as a user would.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import aio_pika
import pytest
import pytest_asyncio
import yaml

from fakeray import FakeCluster, FakeServer
from rmcs_cli import main
from scheduler_daemon.settings import Settings
from brokeradmin import rabbitmqctl
from scheduler_daemon.broker import alternate_exchange_policy
from support import delete_topology, make_settings, running_daemon, sid

pytestmark = pytest.mark.usefixtures("rabbitmq")

RMCS = str(Path(sys.executable).with_name("rmcs"))
SUBCOMMANDS = ("submit", "list", "show", "logs", "stop", "delete", "clusters", "events", "declare", "queues")
NAME_KEYS = ("amqp_url", "http_addr", "intake_exchange", "intake_queue", "intake_routing_key",
             "dead_letter_exchange", "dead_letter_queue", "events_exchange")


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Env:
    settings: Settings
    config: Path
    cluster: FakeCluster

    async def rmcs(self, *args: str, timeout: float = 30.0) -> Result:
        return await run(["--config", str(self.config), *args], timeout)


async def run(argv: list[str], timeout: float = 30.0) -> Result:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.wait_for(asyncio.to_thread(main, argv, stdout=out, stderr=err), timeout)
    return Result(code, out.getvalue(), err.getvalue())


def write_config(path: Path, s: Settings) -> Path:
    path.write_text(yaml.safe_dump({k: getattr(s, k) for k in NAME_KEYS}))
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    tmp = tmp_path_factory.mktemp("rmcs-cli")
    s = make_settings(tmp, probe_interval_s=0.3, track_interval_s=0.2)
    # One node with 2 CPUs: jobs of 1 CPU each, so a third one waits in the queue.
    cluster = FakeCluster("alpha", nodes={"n1": {"CPU": 2, "memory": 8 * 2**30}}, duration_s=0.3)
    server = FakeServer([cluster])
    await server.start()
    try:
        async with running_daemon(s, (cluster.config(tags=frozenset({"cpu"})),)):
            e = Env(s, write_config(tmp / "rmcs.yaml", s), cluster)
            deadline = time.monotonic() + 15
            while '"health": "up"' not in (await e.rmcs("clusters", "--json")).out:
                assert time.monotonic() < deadline, "the fake cluster never came up"
                await asyncio.sleep(0.2)
            yield e
    finally:
        await server.stop()


async def wait_state(e: Env, job: str, state: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = await e.rmcs("show", job, "--json")
        if r.code == 0 and json.loads(r.out)["state"] == state:
            return json.loads(r.out)
        assert time.monotonic() < deadline, f"{job} never reached {state}: {r}"
        await asyncio.sleep(0.2)


# ---- arguments and help ---------------------------------------------------------------------


async def test_help_for_every_subcommand() -> None:
    r = await run(["--help"])
    assert r.code == 0 and "usage: rmcs" in r.out and all(c in r.out for c in SUBCOMMANDS)
    for command in SUBCOMMANDS:
        r = await run([command, "--help"])
        assert r.code == 0, (command, r)
        assert f"usage: rmcs {command}" in r.out and "--amqp-url" in r.out and "exit codes" in r.out, r.out


async def test_bad_arguments_exit_2_without_traceback() -> None:
    for argv in ([], ["frobnicate"], ["submit"], ["submit", "--priority", "11", "--", "/bin/true"],
                 ["submit", "--priority", "URGENT", "--", "/bin/true"], ["submit", "--cpus", "-1", "--", "/bin/true"],
                 ["submit", "--submission-id", "bad id", "--", "/bin/true"], ["submit", "--metadata", "novalue", "--", "x"],
                 ["submit", "--runtime-env", "{not json", "--", "/bin/true"], ["submit", "--timeout", "5", "--", "/bin/true"],
                 ["list", "--limit", "0"], ["list", "--state", "NOPE"], ["list", "--since", "yesterday"],
                 ["events", "job..x"], ["show"], ["stop"], ["logs", "x", "--interval", "0"],
                 ["--api", "ftp://x", "clusters"], ["--amqp-url", "http://x", "events"]):
        r = await run(argv)
        assert r.code == 2, (argv, r)
        assert "Traceback" not in r.err and r.err.strip(), (argv, r)


def test_console_script_is_installed() -> None:
    result = subprocess.run([RMCS, "stop", "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "usage: rmcs stop" in result.stdout, result


def test_entrypoint_words_and_job_files(tmp_path: Path) -> None:
    from rmcs_cli import CliError, build_job, build_parser

    def job(*argv: str) -> tuple[dict[str, Any], str, int | None]:
        return build_job(build_parser().parse_args(["submit", *argv]))

    body, sub, prio = job("--", "/bin/sh -c 'echo a && echo b'")
    assert body == {"entrypoint": "/bin/sh -c 'echo a && echo b'", "submission_id": sub} and prio is None
    assert sub.startswith("sub_")
    body, _, _ = job("--priority", "LOW", "--", "/usr/bin/python3", "-c", "print('hi there')")
    assert body["entrypoint"] == "/usr/bin/python3 -c 'print('\"'\"'hi there'\"'\"')'" and body["priority"] == 1
    body, _, _ = job("--cpus", "2", "--gpus", "0.5", "--memory", "4", "--resource", "accel=1", "--", "/bin/true")
    assert body["resource_requirements"] == {"CPU": 2.0, "GPU": 0.5, "memory": 4.0, "accel": 1.0}

    contract = tmp_path / "job.yaml"
    contract.write_text("entrypoint: /bin/true\npriority: HIGH\nmetadata: {a: '1'}\n")
    body, sub, prio = job("--file", str(contract), "--metadata", "b=2", "--submission-id", "mine-1")
    assert body == {"entrypoint": "/bin/true", "priority": "HIGH", "metadata": {"a": "1", "b": "2"},
                    "submission_id": "mine-1"} and sub == "mine-1" and prio == 9

    seed = tmp_path / "seed.json"  # another format the daemon translates: passed as it is
    paddle = {"name": "train", "command": "/bin/true", "flavour": {"name": "small", "cpu": "1", "mem": "1Gi"}}
    seed.write_text(json.dumps(paddle))
    body, sub, prio = job("--file", str(seed))
    assert body == paddle and prio == 5 and sub.startswith("sub_")  # PaddleFlow's default: NORMAL
    with pytest.raises(CliError) as refused:
        job("--file", str(seed), "--cpus", "1")
    assert refused.value.code == 2 and "contract" in refused.value.message
    # Its own id and priority are the daemon's: the CLI prints that id and publishes that priority.
    seed.write_text(json.dumps({**paddle, "id": "job-abc", "schedulingPolicy": {"priority": "HIGH"}}))
    body, sub, prio = job("--file", str(seed))
    assert body["id"] == "job-abc" and sub == "job-abc" and prio == 9
    for option, value in (("--submission-id", "other"), ("--priority", "1")):
        with pytest.raises(CliError) as disagrees:
            job("--file", str(seed), option, value)
        assert disagrees.value.code == 2 and "disagrees" in disagrees.value.message
    seed.write_text(json.dumps({"name": "train", "flavour": {"name": "flavour1"}}))  # refused before it is sent
    with pytest.raises(CliError) as invalid:
        job("--file", str(seed))
    assert invalid.value.code == 2 and "command is required" in invalid.value.message
    with pytest.raises(CliError) as both:
        job("--file", str(contract), "--", "/bin/true")
    assert both.value.code == 2


# ---- the job cycle --------------------------------------------------------------------------


async def test_submit_wait_succeeds_and_prints_each_transition(env: Env) -> None:
    job = sid("cli-ok")
    r = await env.rmcs("submit", "--submission-id", job, "--cpus", "1", "--memory", "0.5", "--tag", "cli",
                       "--tag", "ok", "--cluster-tag", "cpu", "--priority", "HIGH", "--metadata", "owner=me",
                       "--max-retries", "1", "--queue-timeout", "60", "--runtime-env", '{"env_vars": {"A": "1"}}',
                       "--wait", "--", "/bin/sleep", "0.3")
    assert r.code == 0, r
    lines = r.out.splitlines()
    assert lines[0] == job
    assert [line.split()[1] for line in lines[1:]] == ["ACCEPTED", "DISPATCHED", "RUNNING", "SUCCEEDED"], r.out
    assert "cluster alpha" in lines[-1]
    (ray_job,) = [j for j in env.cluster.jobs.values() if j.submission_id == job]
    assert ray_job.entrypoint == "/bin/sleep 0.3"
    assert ray_job.metadata["owner"] == "me" and ray_job.runtime_env["env_vars"]["A"] == "1"
    assert ray_job.need["CPU"] == 1 and ray_job.need["memory"] == 0.5 * 2**30

    shown = await env.rmcs("show", job)
    assert shown.code == 0, shown
    head, history = shown.out.split("\n\n")
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in head.splitlines())
    assert fields["state"] == "SUCCEEDED (final)" and fields["cluster"] == "alpha" and fields["priority"] == "9"
    assert fields["tags"] == "cli, ok" and fields["metadata"] == "owner=me" and fields["attempt"] == "1"
    assert fields["owner"] == "guest", "the broker user of the URL, stamped as user_id"
    assert [row.split()[1] for row in history.splitlines()] == ["STATE", "ACCEPTED", "DISPATCHED", "RUNNING", "SUCCEEDED"]
    data = json.loads((await env.rmcs("show", job, "--json")).out)
    assert data["submission_id"] == job and data["final"] and data["priority"] == 9 and data["tags"] == ["cli", "ok"]
    assert [t["state"] for t in data["transitions"]] == ["ACCEPTED", "DISPATCHED", "RUNNING", "SUCCEEDED"]

    logs = await env.rmcs("logs", job)
    assert logs.code == 0 and logs.out == "fake ray alpha: running /bin/sleep 0.3\n", logs


async def test_submit_wait_exits_1_when_the_job_fails(env: Env, tmp_path: Path) -> None:
    job = sid("cli-fail")
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"entrypoint": "/bin/false --fail", "submission_id": job, "tags": ["from-file"],
                                "resource_requirements": {"CPU": 1}}))
    r = await env.rmcs("submit", "--file", str(spec), "--tag", "override", "--wait", "--json")
    assert r.code == 1, r
    events = [json.loads(line) for line in r.out.splitlines()[1:]]
    assert events[-1]["state"] == "FAILED" and events[-1]["final"] and events[-1]["tags"] == ["override"]
    assert f"job {job} ended FAILED" in r.err and "Traceback" not in r.err


async def test_a_paddleflow_file_with_its_own_id_is_followed_by_that_id(env: Env, tmp_path: Path) -> None:
    job = sid("cli-paddle")
    spec = tmp_path / "paddle.json"
    spec.write_text(json.dumps({"id": job, "name": "train", "command": "/bin/sleep 0.2",
                                "flavour": {"name": "small", "cpu": "1", "mem": "1Gi"},
                                "schedulingPolicy": {"priority": "HIGH"}}))
    r = await env.rmcs("submit", "--file", str(spec), "--wait")
    assert r.code == 0 and r.out.splitlines()[0] == job and "SUCCEEDED" in r.out.splitlines()[-1], r
    shown = json.loads((await env.rmcs("show", job, "--json")).out)
    assert shown["priority"] == 9 and shown["job_id"] == "train", shown
    again = await env.rmcs("submit", "--file", str(spec))  # the id is taken: said at once
    assert again.code == 2 and "already exists" in again.err and "not queued" in again.err, again
    again = await env.rmcs("submit", "--submission-id", job, "--", "/bin/true")
    assert again.code == 2 and "already exists" in again.err, again


async def test_submit_ships_a_local_working_dir(env: Env, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "run.sh").write_text("echo shipped\n")
    r = await env.rmcs("submit", "--working-dir", str(project), "--wait", "--", "/bin/sh run.sh")
    assert r.code == 0 and "SUCCEEDED" in r.out.splitlines()[-1], r
    (ray_job,) = [j for j in env.cluster.jobs.values() if j.submission_id == r.out.splitlines()[0]]
    uri = ray_job.runtime_env["working_dir"]
    assert uri.startswith("gcs://_ray_pkg_") and uri[6:] in env.cluster.packages
    missing = await env.rmcs("submit", "--working-dir", str(tmp_path / "nosuch"), "--", "/bin/sh run.sh")
    assert missing.code == 2 and "neither a directory nor a .zip" in missing.err, missing


async def test_delete_a_job_that_ended(env: Env) -> None:
    job = sid("cli-del")
    assert (await env.rmcs("submit", "--submission-id", job, "--wait", "--", "/bin/true")).code == 0
    r = await env.rmcs("delete", job)
    assert r.code == 0 and r.out.strip() == f"{job}: deleted", r
    assert (await env.rmcs("show", job)).code == 4
    assert all(j.submission_id != job for j in env.cluster.jobs.values())
    gone = await env.rmcs("delete", job)
    assert gone.code == 4 and "unknown job" in gone.err, gone


async def test_a_rejected_job_ends_the_wait_with_1(env: Env) -> None:
    r = await env.rmcs("submit", "--gpus", "4", "--wait", "--", "/bin/true")
    assert r.code == 1 and "REJECTED" in r.out and "ended REJECTED" in r.err, r


async def test_wait_gives_up_after_its_timeout(env: Env) -> None:
    r = await env.rmcs("submit", "--wait", "--timeout", "0.5", "--", "/bin/sleep 1.5")
    assert r.code == 5 and "gave up waiting" in r.err and "ACCEPTED" in r.out, r
    await wait_state(env, r.out.splitlines()[0], "SUCCEEDED")


async def test_list_table_json_and_pages(env: Env) -> None:
    tag = sid("batch")
    jobs = [sid("cli-list") for _ in range(3)]
    for job in jobs:
        r = await env.rmcs("submit", "--submission-id", job, "--tag", tag, "--", "/bin/true")
        assert r.code == 0 and r.out.strip() == job, r
    deadline = time.monotonic() + 15
    while True:
        listed = json.loads((await env.rmcs("list", "--tag", tag, "--state", "SUCCEEDED", "--json")).out)
        if len(listed["jobs"]) == 3:
            break
        assert time.monotonic() < deadline, listed
        await asyncio.sleep(0.2)
    assert {j["submission_id"] for j in listed["jobs"]} == set(jobs) and listed["next_cursor"] is None
    mine = json.loads((await env.rmcs("list", "--tag", tag, "--owner", "guest", "--json")).out)
    assert {j["submission_id"] for j in mine["jobs"]} == set(jobs)
    assert json.loads((await env.rmcs("list", "--tag", tag, "--owner", "someone-else", "--json")).out)["jobs"] == []
    default = json.loads((await env.rmcs("list", "--tag", tag, "--queue", "default", "--json")).out)
    assert {j["submission_id"] for j in default["jobs"]} == set(jobs)
    other = await env.rmcs("list", "--tag", tag, "--queue", "research")
    assert other.code == 0 and other.out == "" and "no jobs" in other.err, other

    table = await env.rmcs("list", "--tag", tag, "--since", "10m")
    assert table.code == 0, table
    header, *rows = table.out.splitlines()
    assert header.split()[:4] == ["SUBMISSION", "ID", "STATE", "QUEUE"] and len(rows) == 3
    assert all(any(row.startswith(j) for row in rows) for j in jobs) and all("SUCCEEDED" in row for row in rows)
    assert all(row.split()[2] == "default" for row in rows)

    first = await env.rmcs("list", "--tag", tag, "--limit", "2", "--json")
    page = json.loads(first.out)
    assert len(page["jobs"]) == 2 and page["next_cursor"]
    second = json.loads((await env.rmcs("list", "--tag", tag, "--limit", "2", "--cursor", page["next_cursor"],
                                        "--json")).out)
    assert len(second["jobs"]) == 1 and second["next_cursor"] is None
    assert {j["submission_id"] for j in page["jobs"] + second["jobs"]} == set(jobs)
    paged_table = await env.rmcs("list", "--tag", tag, "--limit", "2")
    assert len(paged_table.out.splitlines()) == 3 and f"--cursor {page['next_cursor']}" in paged_table.err
    everything = json.loads((await env.rmcs("list", "--tag", tag, "--limit", "1", "--all", "--json")).out)
    assert sorted(j["submission_id"] for j in everything["jobs"]) == sorted(jobs)

    empty = await env.rmcs("list", "--tag", tag, "--until", "2000-01-01T00:00:00Z")
    assert empty.code == 0 and empty.out == "" and "no jobs" in empty.err


async def test_logs_follow_stop_and_cancel(env: Env) -> None:
    long_job, filler, queued = sid("cli-long"), sid("cli-filler"), sid("cli-queued")
    tail = asyncio.create_task(env.rmcs("events", "job.stopped.#", "--count", "1", "--json", "--timeout", "30", timeout=40))
    await asyncio.sleep(0.5)  # bound before anything is stopped

    # 2 CPUs: the long job and the filler take them both, so `queued` waits in the daemon.
    for job, cmd in ((long_job, "/bin/sleep 30"), (filler, "/bin/sleep 4"), (queued, "/bin/sleep 1")):
        assert (await env.rmcs("submit", "--submission-id", job, "--cpus", "1", "--", cmd)).code == 0
    follow = asyncio.create_task(env.rmcs("logs", filler, "--follow", "--interval", "0.2", timeout=30))
    await wait_state(env, long_job, "RUNNING")
    await wait_state(env, filler, "RUNNING")

    # Most likely still in RabbitMQ (the daemon takes a job only when it can place it):
    # recorded, and cancelled when it arrives; if the daemon holds it already, cancelled now.
    cancelled = await env.rmcs("stop", queued, "--via-broker", "--reason", "changed my mind")
    assert cancelled.code == 0, cancelled
    assert f"{queued}: recorded" in cancelled.out or f"{queued}: cancelled" in cancelled.out, cancelled
    stopped = await env.rmcs("stop", long_job, "--reason", "enough")
    assert stopped.code == 0 and f"{long_job}: stopping" in stopped.out, stopped
    final = await wait_state(env, long_job, "STOPPED")
    assert final["final"]
    gone = await wait_state(env, queued, "CANCELLED")
    assert gone["cluster"] is None and gone["message"] == "changed my mind"

    again = await env.rmcs("stop", long_job)
    assert again.code == 1 and "already_final" in again.err and "STOPPED" in again.err, again

    followed = await follow
    assert followed.code == 0 and followed.out == "fake ray alpha: running /bin/sleep 4\n", followed
    assert json.loads((await env.rmcs("show", filler, "--json")).out)["state"] == "SUCCEEDED"

    stop_event = await tail
    assert stop_event.code == 0, stop_event
    (line,) = stop_event.out.splitlines()
    event = json.loads(line)
    assert event["submission_id"] == long_job and event["state"] == "STOPPED" and event["final"]


async def test_events_count(env: Env) -> None:
    tail = asyncio.create_task(env.rmcs("events", "job.*.*", "--count", "4", "--timeout", "20", timeout=30))
    await asyncio.sleep(0.5)
    job = sid("cli-tail")
    assert (await env.rmcs("submit", "--submission-id", job, "--", "/bin/true")).code == 0
    r = await tail
    assert r.code == 0, r
    lines = r.out.splitlines()
    assert [x.split()[1] for x in lines] == ["job.accepted._", "job.dispatched.alpha", "job.running.alpha",
                                             "job.succeeded.alpha"], lines
    assert all(x.split()[2] == job for x in lines) and lines[-1].split()[5] == "final"


async def test_clusters_table_and_json(env: Env) -> None:
    table = await env.rmcs("clusters")
    assert table.code == 0, table
    header, row = table.out.splitlines()
    assert header.split()[:2] == ["NAME", "HEALTH"] and row.split()[:2] == ["alpha", "up"]
    assert "/2" in row and "cpu" in row
    data = json.loads((await env.rmcs("clusters", "--json")).out)
    (c,) = data["clusters"]
    assert c["name"] == "alpha" and c["total"]["CPU"] == 2 and c["tags"] == ["cpu"]


# ---- errors ---------------------------------------------------------------------------------


async def test_unknown_job_exits_4(env: Env) -> None:
    ghost = sid("ghost")
    for argv in (["show", ghost], ["logs", ghost], ["logs", ghost, "--follow", "--interval", "0.5"]):
        r = await env.rmcs(*argv)
        assert r.code == 4, (argv, r)
        assert "unknown job" in r.err and ghost in r.err and "Traceback" not in r.err, r


async def test_logs_of_a_job_never_dispatched(env: Env) -> None:
    r = await env.rmcs("submit", "--gpus", "8", "--wait", "--", "/bin/true")
    job = r.out.splitlines()[0]
    logs = await env.rmcs("logs", job)
    assert logs.code == 1 and "no logs" in logs.err and "dispatched" in logs.err, logs
    follow = await env.rmcs("logs", job, "--follow")
    assert follow.code == 1 and "ended REJECTED with no logs" in follow.err, follow


async def test_unreachable_api_and_broker_exit_3(env: Env, tmp_path: Path) -> None:
    dead_api = ["--api", "http://127.0.0.1:9"]
    for argv in (["list"], ["show", "x"], ["logs", "x"], ["stop", "x"], ["clusters"]):
        r = await run([*dead_api, *argv])
        assert r.code == 3 and "cannot reach the daemon's API at http://127.0.0.1:9" in r.err, (argv, r)
        assert "Traceback" not in r.err
    # Something that answers HTTP but is not the rmcs API (a Ray dashboard).
    r = await run(["--api", env.cluster.url, "show", "x"])
    assert r.code == 3 and "does not serve" in r.err, r

    dead_broker = ["--amqp-url", "amqp://guest:guest@127.0.0.1:9/"]
    for argv in (["submit", "--", "/bin/true"], ["events", "--count", "1"], ["declare"], ["stop", "x", "--via-broker"]):
        r = await run([*dead_broker, *argv])
        assert r.code == 3 and "cannot reach the broker at 127.0.0.1:9" in r.err, (argv, r)
        assert "Traceback" not in r.err
    r = await run(["--amqp-url", "amqp://guest:wrong@127.0.0.1:5672/", "events"])
    assert r.code == 3 and "ACCESS_REFUSED" in r.err, r

    # A broker without the topology: a clear word instead of a lost message.
    missing = write_config(tmp_path / "missing.yaml", make_settings(tmp_path))
    r = await run(["--config", str(missing), "submit", "--", "/bin/true"])
    assert r.code == 3 and "does not exist" in r.err and "rmcs declare" in r.err, r


def test_unreachable_broker_from_the_environment() -> None:
    environ = {**os.environ, "RMCS_AMQP_URL": "amqp://guest:guest@127.0.0.1:9/", "RMCS_HTTP_ADDR": "127.0.0.1:9"}
    for argv in (["submit", "--wait", "--", "/bin/true"], ["list"]):
        result = subprocess.run([RMCS, *argv], capture_output=True, text=True, timeout=30, env=environ)
        assert result.returncode == 3, result
        assert result.stderr.count("\n") == 1 and "127.0.0.1:9" in result.stderr, result.stderr


async def test_declare_then_submit_queues_the_job(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    config = write_config(tmp_path / "fresh.yaml", s)
    try:
        r = await run(["--config", str(config), "declare"])
        assert r.code == 0 and s.intake_queue in r.out and s.events_exchange in r.out, r
        assert (await run(["--config", str(config), "declare"])).code == 0  # idempotent
        job = sid("queued")
        r = await run(["--config", str(config), "submit", "--submission-id", job, "--priority", "7", "--", "/bin/true"])
        assert r.code == 0 and r.out == f"{job}\n", r
        conn = await aio_pika.connect(s.amqp_url)
        async with conn:
            queue = await (await conn.channel()).declare_queue(s.intake_queue, passive=True)
            message = await queue.get(timeout=5)
            assert message is not None
            body = json.loads(message.body)
            assert body == {"entrypoint": "/bin/true", "submission_id": job, "priority": 7}
            assert message.message_id == job and message.priority == 7 and message.delivery_mode == 2
            assert message.content_type == "application/json"
    finally:
        await delete_topology(s)
        rabbitmqctl("clear_policy", "-p", "/", alternate_exchange_policy(s)[0])
