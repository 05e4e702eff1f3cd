"""rmcs-demo: start the two local Ray clusters of clusters.yaml, run the daemon against them,
submit a few example jobs and print their lifecycle events as they happen."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from producers.core import Client
from scheduler_daemon.broker import declare
from scheduler_daemon.localray import HeadSpec, LocalHead
from scheduler_daemon.settings import ClusterConfig, load_clusters, load_settings

from .context import producer_config


def _spec(c: ClusterConfig, num_gpus: int) -> HeadSpec:
    port = urlsplit(c.dashboard_url).port or 8265
    base = int(c.head_address.rsplit(":", 1)[1]) if ":" in c.head_address else 16379 + 1000 * num_gpus
    return HeadSpec(c.name, dashboard_port=port, port_base=base, num_cpus=2, num_gpus=num_gpus,
                    temp_root="/tmp/rmcs-demo")


def _examples(run: str) -> list[tuple[dict[str, object], int]]:
    return [
        ({"submission_id": f"demo-cpu-{run}", "entrypoint": "/bin/sleep 2",
          "resource_requirements": {"CPU": 1}, "tags": ["demo"]}, 5),
        ({"submission_id": f"demo-gpu-{run}", "entrypoint": f"{sys.executable} -c 'import os; "
          "print(\"GPUs:\", os.environ.get(\"CUDA_VISIBLE_DEVICES\"))'",
          "resource_requirements": {"CPU": 1, "GPU": 1}, "tags": ["demo", "gpu"]}, 5),
        ({"submission_id": f"demo-pref-{run}", "entrypoint": "/bin/echo hello from the preferred cluster",
          "preferred_cluster": "gpu_cluster"}, 5),
        ({"submission_id": f"demo-retry-{run}", "entrypoint": "/bin/false", "max_retries": 1}, 1),
        ({"submission_id": f"demo-huge-{run}", "entrypoint": "/bin/true",
          "resource_requirements": {"CPU": 512}}, 9),
        ({"submission_id": f"demo-bad-{run}", "entrypoint": "python train.py"}, 9),
    ]


def _show(e: dict[str, object], want: set[str], done: set[str]) -> None:
    """Print one event; note the example jobs that reached their final state."""
    if str(e["event"]).startswith("cluster."):
        print(f"  {e['event']:<28}", flush=True)
        return
    if not str(e["event"]).startswith("job."):
        return
    print(f"  {e['event']:<28} {e['submission_id']:<22} attempt {e['attempt']}  "
          f"{str(e.get('message') or '')[:90]}", flush=True)
    if e.get("final") and e["submission_id"] in want:
        done.add(str(e["submission_id"]))


async def _run(clusters_path: str, keep: bool) -> int:
    settings = load_settings(os.environ.get("RMCS_CONFIG"))
    clusters = load_clusters(clusters_path)
    heads = [LocalHead.launch(_spec(c, num_gpus=2 if "gpu" in c.name or "gpu" in c.tags else 0))
             for c in clusters]
    daemon: subprocess.Popen[bytes] | None = None
    try:
        print(f"starting {len(heads)} local Ray clusters: " + ", ".join(h.spec.name for h in heads), flush=True)
        for h in heads:
            await asyncio.to_thread(h.wait_ready, 120)
        await declare(settings)
        log_path = Path(settings.state_dir) / "demo-daemon.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        daemon = subprocess.Popen([sys.executable, "-m", "scheduler_daemon", "--clusters", clusters_path],
                                  stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
        print(f"daemon started (pid {daemon.pid}, JSON logs in {log_path}, API on http://{settings.http_addr})",
              flush=True)
        print(f"dashboard: open http://{settings.http_addr}/ to watch the jobs live", flush=True)
        run = uuid.uuid4().hex[:6]
        jobs = _examples(run)
        want = {str(b["submission_id"]) for b, _ in jobs}
        done: set[str] = set()
        client = Client(producer_config(settings), name="rmcs-demo")
        try:
            async with await client.subscribe(["#"]) as events:
                # As they are, not through the job builder: two of them are for the daemon to refuse.
                for body, prio in jobs:
                    await client.submit_as(str(body["submission_id"]), body, prio)
                print(f"published {len(jobs)} example jobs; events:", flush=True)
                async with asyncio.timeout(180):
                    while done != want:
                        _show(await events.get(), want, done)
        except TimeoutError:
            print(f"timed out; still open: {sorted(want - done)}", flush=True)
            return 1
        finally:
            await client.close()
        print("every example job reached its final state", flush=True)
        if keep:
            print("clusters and daemon keep running; Ctrl+C to stop", flush=True)
            await asyncio.Event().wait()
        return 0
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            await asyncio.to_thread(daemon.wait, 30)
        for h in heads:
            await asyncio.to_thread(h.stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rmcs-demo", description=__doc__)
    parser.add_argument("--clusters", default="clusters.yaml")
    parser.add_argument("--keep", action="store_true", help="keep the clusters and daemon running afterwards")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    try:
        rc = asyncio.run(_run(args.clusters, args.keep))
    except KeyboardInterrupt:
        rc = 130
    print(f"demo finished in {time.monotonic() - t0:.0f}s", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
