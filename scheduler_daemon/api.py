"""The daemon's HTTP API: health, readiness, the clusters' view and metrics."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from .settings import parse_http_addr

if TYPE_CHECKING:
    from .daemon import Daemon

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(_BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(_BUCKETS, value)] += 1
        self.total += value
        self.n += 1

    def render(self, name: str, labels: str = "") -> list[str]:
        out, running = [], 0
        sep = "," if labels else ""
        for bound, count in zip((*_BUCKETS, float("inf")), self.counts):
            running += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {running}')
        out.append(f"{name}_sum{{{labels}}} {self.total}")
        out.append(f"{name}_count{{{labels}}} {self.n}")
        return out


@dataclass
class Metrics:
    events: dict[str, int] = field(default_factory=dict)
    dispatch_latency: Histogram = field(default_factory=Histogram)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


class HttpServer:
    def __init__(self, daemon: "Daemon") -> None:
        self.daemon = daemon
        self.app = web.Application()
        self.app.add_routes([
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/api/v1/clusters", self.clusters),
            web.get("/metrics", self.metrics),
        ])
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        host, port = parse_http_addr(self.daemon.settings.http_addr)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        d = self.daemon
        checks = {"broker": d.intake.connected, "clusters_probed": d.prober.any_probed,
                  "stopping": d.stopping.is_set()}
        ready = checks["broker"] and checks["clusters_probed"] and not checks["stopping"]
        return _json({"ready": ready, **checks}, 200 if ready else 503)

    async def clusters(self, request: web.Request) -> web.Response:
        return _json({"clusters": [v.summary() for v in self.daemon.prober.views()]})

    async def metrics(self, request: web.Request) -> web.Response:
        d = self.daemon
        lines = [
            "# TYPE rmcs_window_jobs gauge", f"rmcs_window_jobs {len(d.window)}",
            "# TYPE rmcs_window_size gauge", f"rmcs_window_size {d.window.capacity}",
            "# TYPE rmcs_tracked_jobs gauge", f"rmcs_tracked_jobs {len(d.tracked)}",
            "# TYPE rmcs_intake_consuming gauge", f"rmcs_intake_consuming {int(d.intake.active)}",
            "# TYPE rmcs_messages_consumed_total counter", f"rmcs_messages_consumed_total {d.intake.consumed}",
            "# TYPE rmcs_job_events_total counter",
        ]
        lines += [f'rmcs_job_events_total{{state="{s}"}} {n}' for s, n in sorted(d.metrics.events.items())]
        lines.append("# TYPE rmcs_dispatch_latency_seconds histogram")
        lines += d.metrics.dispatch_latency.render("rmcs_dispatch_latency_seconds")
        lines += ["# TYPE rmcs_cluster_up gauge", "# TYPE rmcs_probe_latency_seconds gauge"]
        for v in d.prober.views():
            lines.append(f'rmcs_cluster_up{{cluster="{v.name}",health="{v.health.value}"}} '
                         f'{int(v.health.value in ("up", "degraded"))}')
            if v.latency_s is not None:
                lines.append(f'rmcs_probe_latency_seconds{{cluster="{v.name}"}} {v.latency_s}')
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")
