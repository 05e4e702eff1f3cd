"""Jobs' local code (producers/packages.py, scheduler_daemon/shipping.py): the zip, the names,
the refusals, and the daemon's shipping on simulated clusters. The helper and the CLI shipping a
directory end to end: tests/test_producers.py, tests/test_rmcs_cli.py; on real Ray:
tests/test_producers_real.py."""

from __future__ import annotations

import io
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from fakeray import FakeCluster, FakeServer
from producers.job import build_job
from producers.packages import local_paths, pack, package_name, with_uris
from scheduler_daemon.jobs import InvalidJob, MessageMeta, parse_job
from scheduler_daemon.shipping import FRESH_S, PackageMissing, Shipper, packages_named
from support import Events, make_settings, publish, running_daemon, sid


def project(root: Path) -> Path:
    (root / "lib").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "run.sh").write_text("cat lib/a.txt\n")
    (root / "lib" / "a.txt").write_text("a\n")
    (root / "lib" / "b.log").write_text("log\n")
    (root / ".git" / "HEAD").write_text("ref\n")
    return root


def names(data: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return z.namelist()


def test_the_same_files_make_the_same_package(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    first = pack(root)
    later = time.time() + 3600
    for path in root.rglob("*"):
        os.utime(path, (later, later))  # times are not in it
    assert pack(root) == first and package_name(first).startswith("_ray_pkg_")
    assert names(first) == ["run.sh", "lib/a.txt", "lib/b.log"]  # in order, each directory sorted; no .git
    (root / "lib" / "a.txt").write_text("changed\n")
    assert package_name(pack(root)) != package_name(first)


def test_excludes_parent_zips_and_refusals(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    assert names(pack(root, excludes=["*.log"])) == ["run.sh", "lib/a.txt"]
    assert names(pack(root, excludes=["lib"])) == ["run.sh"]
    assert names(pack(root, excludes=["lib/*"])) == ["run.sh"]
    assert names(pack(root, parent=True)) == ["p/run.sh", "p/lib/a.txt", "p/lib/b.log"]  # as py_modules
    archive = tmp_path / "code.zip"
    archive.write_bytes(pack(root))
    assert pack(archive) == archive.read_bytes()  # a zip is sent as it is
    with pytest.raises(ValueError, match="neither a directory nor a .zip"):
        pack(tmp_path / "nosuch")
    with pytest.raises(ValueError, match="limit"):
        pack(root, limit=10)


def test_local_paths_are_found_and_replaced() -> None:
    env = {"working_dir": "./", "py_modules": ["/srv/mod", "s3://b/m.zip"], "pip": ["x"]}
    found = local_paths(env)
    assert found == [("working_dir", None, "./"), ("py_modules", 0, "/srv/mod")]
    out = with_uris(env, {("working_dir", None): "gcs://a.zip", ("py_modules", 0): "gcs://b.zip"})
    assert out == {"working_dir": "gcs://a.zip", "py_modules": ["gcs://b.zip", "s3://b/m.zip"], "pip": ["x"]}
    assert env["working_dir"] == "./"  # not changed in place
    uri = f"gcs://{package_name(b'x')}"
    assert list(packages_named({"working_dir": uri, "py_modules": [uri, "gcs://other.zip"]})) == [
        package_name(b"x")] * 2


def test_relative_paths_name_files_of_the_working_dir_only() -> None:
    with pytest.raises(ValueError, match="relative path"):
        build_job("python train.py")
    body, _ = build_job("python train.py --data data/x.csv", runtime_env={"working_dir": "s3://b/code.zip"})
    assert body["entrypoint"] == "python train.py --data data/x.csv"
    with pytest.raises(ValueError, match=r"'\.\.'"):
        build_job("python ../train.py", runtime_env={"working_dir": "s3://b/code.zip"})
    job = parse_job(b'{"entrypoint": "python train.py", "runtime_env": {"working_dir": "gcs://x.zip"}}',
                    MessageMeta(), default_resources={"CPU": 1}, max_bytes=1 << 20)
    assert job.command.scripts == ("train.py",)  # a locked cluster's allow-list still sees it


@pytest.mark.parametrize("env", [{"working_dir": "./"}, {"working_dir": "/home/me/project"},
                                 {"py_modules": ["/home/me/mod"]}])
def test_the_daemon_refuses_a_path_of_the_submitting_machine(env: dict[str, Any]) -> None:
    body = b'{"entrypoint": "/bin/true", "runtime_env": ' + __import__("orjson").dumps(env) + b"}"
    with pytest.raises(InvalidJob, match="path on the submitting machine, which no cluster can read"):
        parse_job(body, MessageMeta(), default_resources={"CPU": 1}, max_bytes=1 << 20)


class _Dashboard:
    def __init__(self, has: bool) -> None:
        self.held: set[str] = set() if not has else {package_name(b"code")}
        self.asked = self.put = 0

    async def has_package(self, name: str) -> bool:
        self.asked += 1
        return name in self.held

    async def put_package(self, name: str, data: bytes) -> None:
        self.put += 1
        self.held.add(name)


class _Store:
    def __init__(self, packages: dict[str, bytes]) -> None:
        self.packages = packages

    async def package(self, name: str) -> bytes | None:
        return self.packages.get(name)


async def test_the_shipper_asks_once_a_minute_and_uploads_what_is_missing() -> None:
    name = package_name(b"code")
    now = [0.0]
    shipper = Shipper(_Store({name: b"code"}), clock=lambda: now[0])  # type: ignore[arg-type]
    dash = _Dashboard(has=False)
    env = {"working_dir": f"gcs://{name}"}
    await shipper.ship(env, "c", dash)  # type: ignore[arg-type]
    assert (dash.asked, dash.put, shipper.uploaded) == (2, 1, 1)  # asked, given, asked again (pinned)
    await shipper.ship(env, "c", dash)  # type: ignore[arg-type]
    assert dash.asked == 2
    now[0] += FRESH_S
    await shipper.ship(env, "c", dash)  # type: ignore[arg-type]
    assert (dash.asked, dash.put) == (3, 1)
    await shipper.ship({"working_dir": "s3://b/x.zip"}, "c", dash)  # type: ignore[arg-type]
    assert dash.asked == 3  # not ours: left to Ray
    with pytest.raises(PackageMissing, match="neither on cluster c nor kept by rmcs"):
        await shipper.ship({"working_dir": f"gcs://{package_name(b'other')}"}, "c", _Dashboard(False))  # type: ignore[arg-type]




@pytest.mark.usefixtures("rabbitmq")
async def test_a_package_nobody_has_is_rejected_and_a_local_path_too(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    cluster = FakeCluster("c0")
    server = FakeServer([cluster])
    await server.start()
    try:
        async with running_daemon(s, (cluster.config(),)), Events(s) as ev:
            unknown, local = sid("pkg"), sid("local")
            await publish(s, {"submission_id": unknown, "entrypoint": "/bin/true",
                              "runtime_env": {"working_dir": f"gcs://{package_name(b'nobody')}"}})
            await publish(s, {"submission_id": local, "entrypoint": "/bin/true",
                              "runtime_env": {"working_dir": "/home/me/project"}})
            await ev.wait_final([unknown, local], 20)
            assert ev.states(unknown)[-1] == "REJECTED" and "nor kept by rmcs" in ev.of(unknown)[-1]["message"]
            assert ev.states(local)[-1] == "REJECTED" and "no cluster can read" in ev.of(local)[-1]["message"]
            assert not cluster.jobs
    finally:
        await server.stop()
