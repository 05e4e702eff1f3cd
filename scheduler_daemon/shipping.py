"""Jobs' code packages onto the cluster a job is dispatched to, just before its POST.

A job whose `working_dir` or `py_modules` names `gcs://_ray_pkg_<sha1>.zip` was shipped by the
producers' helper (producers/packages.py): the package is in the status store, and the cluster
chosen may not have it, or no longer (Ray forgets a package no job uses within minutes). So
before the POST the cluster is asked (`GET /api/packages/gcs/<name>`, which also pins it for
Ray's ten minutes) and, when it lacks it, given it (`PUT`), as Ray's own client does. What a
cluster was seen to hold is believed for FRESH_S, so a burst of one package's jobs asks once;
one upload per cluster and package runs at a time. A package neither on the cluster nor kept by
rmcs (one uploaded to another cluster with Ray's client, say) refuses the job there.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Iterator, Mapping

from producers.packages import PACKAGE_URI

from .rayapi import RayDashboard, RayRejected
from .status.storebase import StatusStore

FRESH_S = 60.0
_FORGET_FROM = 1024  # remembered (cluster, package) pairs before the stale ones are dropped


class PackageMissing(Exception):
    pass


def packages_named(runtime_env: Mapping[str, Any]) -> Iterator[str]:
    """The rmcs packages a runtime_env names."""
    candidates = [runtime_env.get("working_dir")]
    modules = runtime_env.get("py_modules")
    if isinstance(modules, list):
        candidates.extend(modules)
    for uri in candidates:
        if isinstance(uri, str):
            found = PACKAGE_URI.fullmatch(uri)
            if found:
                yield found.group(1)


class Shipper:
    def __init__(self, store: StatusStore, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock
        self._seen: dict[tuple[str, str], float] = {}  # (cluster, package) -> when it was seen there
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.uploaded = 0

    async def ship(self, runtime_env: Mapping[str, Any], cluster: str, dashboard: RayDashboard) -> None:
        """Make sure `cluster` holds every package `runtime_env` names. RayError when it could
        not be asked or given one; PackageMissing when rmcs does not hold one it lacks."""
        for name in packages_named(runtime_env):
            key = (cluster, name)
            if self._fresh(key):
                continue
            async with self._locks.setdefault(key, asyncio.Lock()):
                if self._fresh(key):
                    continue
                if not await dashboard.has_package(name):
                    data = await self.store.package(name)
                    if data is None:
                        raise PackageMissing(f"package gcs://{name} is neither on cluster {cluster} nor kept by "
                                             "rmcs (upload it through the producers' helper)")
                    await dashboard.put_package(name, data)
                    self.uploaded += 1
                    if not await dashboard.has_package(name):  # and pinned, as a job's use would
                        raise RayRejected(500, f"package {name} uploaded to {cluster} but not found there")
                self._remember(key)

    def _fresh(self, key: tuple[str, str]) -> bool:
        seen = self._seen.get(key)
        return seen is not None and self.clock() - seen < FRESH_S

    def _remember(self, key: tuple[str, str]) -> None:
        now = self.clock()
        if len(self._seen) >= _FORGET_FROM:
            self._seen = {k: t for k, t in self._seen.items() if now - t < FRESH_S}
            self._locks = {k: lock for k, lock in self._locks.items() if k in self._seen or lock.locked()}
        self._seen[key] = now
