"""`GET` and `PUT /api/v1/packages/<name>`: jobs' code packages (producers/packages.py).

The producers' helper zips a job's local `working_dir` (or `py_modules` entry) and puts it here
once; the job names `gcs://<name>`, and the scheduler uploads the package to the cluster it
dispatches the job to (scheduler_daemon/shipping.py). A package is kept in the status store, so
every daemon of a group can ship it, until it has not been used for `journal_retention_s`.

The name is the SHA-1 of the bytes (`_ray_pkg_<40 hex>.zip`, Ray's own form), checked here, so
a package can neither be replaced nor mislabelled. A put is a mutating request: with
`api_tokens_file`, it needs a token. At most `max_package_bytes`, read as it comes.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from producers.packages import PACKAGE_NAME, package_name

from ..settings import Settings
from .params import ApiError, params_of
from .storebase import StatusStore

_CHUNK = 1024 * 1024


class PackageRoutes:
    def __init__(self, settings: Settings, store: StatusStore) -> None:
        self.settings = settings
        self.store = store

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/v1/packages/{name}", self.get, allow_head=False),
                web.put("/api/v1/packages/{name}", self.put)]

    async def get(self, request: web.Request) -> web.Response:
        params_of(request, ())
        name = _name(request)
        size = await self.store.package_size(name)
        if size is None:
            raise ApiError(404, f"no package {name!r}")
        return _json({"name": name, "size": size})

    async def put(self, request: web.Request) -> web.Response:
        params_of(request, ())
        name = _name(request)
        limit = self.settings.max_package_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, f"the package is {request.content_length} bytes, more than max_package_bytes "
                                f"({limit})")
        data = bytearray()
        async for chunk in request.content.iter_chunked(_CHUNK):
            data += chunk
            if len(data) > limit:
                raise ApiError(413, f"the package is more than max_package_bytes ({limit})")
        if package_name(data) != name:
            raise ApiError(400, f"the package's bytes have another SHA-1 than its name {name!r} says")
        created = await self.store.put_package(name, bytes(data))
        return _json({"name": name, "size": len(data)}, 201 if created else 200)


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not PACKAGE_NAME.fullmatch(name):
        raise ApiError(400, f"a package name is _ray_pkg_<SHA-1 of its bytes, 40 hex digits>.zip, got {name[:80]!r}")
    return name


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
