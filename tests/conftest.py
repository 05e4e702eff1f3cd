"""Fixtures: the real RabbitMQ (opt-in per module; a module that asks for it fails, never skips,
without it) and two real local Ray clusters shared by the whole session."""

from __future__ import annotations

import socket
from typing import Iterator

import pytest

from scheduler_daemon.localray import HeadSpec, LocalHead
from scheduler_daemon.settings import ClusterConfig
from slots import BLOCK, DASHBOARD, TEMP_ROOT

# Every port pinned, in this process's slot (slots.py).
CPU = HeadSpec("cpu_cluster", dashboard_port=DASHBOARD, port_base=BLOCK, num_cpus=2, temp_root=TEMP_ROOT)
GPU = HeadSpec("gpu_cluster", dashboard_port=DASHBOARD + 1, port_base=BLOCK + 1000, num_cpus=2,
               num_gpus=2, temp_root=TEMP_ROOT)


@pytest.fixture(scope="session")
def rabbitmq() -> None:
    """Opt in with `pytestmark = pytest.mark.usefixtures("rabbitmq")` in modules that need the broker."""
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=3).close()
    except OSError as exc:
        pytest.fail(f"RabbitMQ is not answering on 127.0.0.1:5672 ({exc}); start it with "
                    "`rabbitmq-server -detached` (.ci/run does)", pytrace=False)


@pytest.fixture(scope="session")
def ray_heads() -> Iterator[tuple[LocalHead, LocalHead]]:
    heads = [LocalHead.launch(CPU), LocalHead.launch(GPU)]
    try:
        for head in heads:
            head.wait_ready(timeout=120)
        yield heads[0], heads[1]
    finally:
        for head in heads:
            head.stop()


@pytest.fixture(scope="session")
def ray_clusters(ray_heads: tuple[LocalHead, LocalHead]) -> tuple[ClusterConfig, ClusterConfig]:
    cpu, gpu = ray_heads
    return (
        ClusterConfig("cpu_cluster", cpu.spec.dashboard_url, tags=frozenset({"cpu"})),
        ClusterConfig("gpu_cluster", gpu.spec.dashboard_url, tags=frozenset({"gpu"}), weight=0.8),
    )
