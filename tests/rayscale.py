"""A real local Ray cluster that autoscales with Ray's own autoscaler and its fake multi-node
provider (the autoscaler starts local raylets as "nodes"), for tests. The recipe is the one
measured in ../shared/FIELD-NOTES.md ("Ray's autoscaler, locally"): an autoscaling config written
by hand (`ray.cluster_utils.AutoscalingCluster` runs `ray stop --force`), the GCS address given
to the provider, `RAY_FAKE_CLUSTER=1 AUTOSCALER_UPDATE_INTERVAL_S=1 ray start --head
--autoscaling-config=...`. A node starts about 5 s after the demand and costs about 400 MB.

Teardown: the fake nodes are children of the autoscaler's monitor and some of their processes
rename themselves, so every process naming the temp dir or the GCS port is taken, with every
descendant: the monitor is sent SIGTERM first, then everything is killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from scheduler_daemon.localray import HeadSpec, LocalHead, _is_zombie, _process_table, processes_of


def autoscaling_config(spec: HeadSpec, node_type: str, resources: dict[str, float], max_workers: int,
                       idle_timeout_minutes: float = 0.2) -> dict:
    empty: list[str] = []
    return {
        "cluster_name": f"rmcs-{spec.name}",
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        # use_node_id_as_ip: the fake nodes share one ip; without it the autoscaler cannot tell
        # them apart; with node updaters (ssh set-up) every launch ends as "launch failed".
        "provider": {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{spec.port_base}",
                     "use_node_id_as_ip": True, "disable_launch_config_check": True,
                     "disable_node_updaters": True},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": spec.num_cpus}, "node_config": {}, "max_workers": 0},
            node_type: {"resources": dict(resources), "node_config": {}, "min_workers": 0,
                        "max_workers": max_workers},
        },
        "head_node_type": "ray.head.default",
        "docker": {}, "auth": {"ssh_user": "ubuntu"}, "file_mounts": {}, "cluster_synced_files": empty,
        "file_mounts_sync_continuously": False, "initialization_commands": empty, "setup_commands": empty,
        "head_setup_commands": empty, "worker_setup_commands": empty, "head_start_ray_commands": empty,
        "worker_start_ray_commands": empty,
    }


class ScalingHead(LocalHead):
    """A head whose cluster grows by `node_type` nodes on demand."""

    @classmethod
    def launch_scaling(cls, spec: HeadSpec, node_type: str, resources: dict[str, float],
                       max_workers: int) -> "ScalingHead":
        ray_bin = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
        if Path(spec.temp_dir).exists():
            cls._kill(spec)
            shutil.rmtree(spec.temp_dir, ignore_errors=True)
        Path(spec.temp_dir).mkdir(parents=True, exist_ok=True)
        config = Path(spec.temp_root) / f"{spec.name}-{spec.port_base}-autoscaling.yaml"
        config.write_text(yaml.safe_dump(autoscaling_config(spec, node_type, resources, max_workers)))
        log_path = Path(spec.temp_root) / f"{spec.name}-{spec.port_base}.log"
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(spec.start_command(ray_bin) + [f"--autoscaling-config={config}"],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env)
        return cls(spec, proc, log_path)

    @staticmethod
    def _pids(spec: HeadSpec, also: list[int] | None = None) -> set[int]:
        gcs = f"127.0.0.1:{spec.port_base}"
        table = _process_table()
        pids = processes_of(spec.temp_dir, also)
        roots = {pid for pid, (_, cmd) in table.items() if gcs in cmd}
        found, changed = pids | roots, True
        while changed:
            changed = False
            for pid, (ppid, _) in table.items():
                if ppid in found and pid not in found:
                    found.add(pid)
                    changed = True
        found.discard(os.getpid())
        return found

    @classmethod
    def _kill(cls, spec: HeadSpec, also: list[int] | None = None) -> None:
        pids = cls._pids(spec, also)
        table = _process_table()
        for pid in pids:
            if "monitor.py" in table.get(pid, (0, ""))[1]:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        time.sleep(1.0)
        for _ in range(3):
            for pid in cls._pids(spec, also) | pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
            pids = {p for p in pids if Path(f"/proc/{p}").exists() and not _is_zombie(p)}

    def stop(self) -> None:
        self._kill(self.spec, [self.proc.pid])
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        shutil.rmtree(self.spec.temp_dir, ignore_errors=True)
