"""Daemon settings and the clusters file: defaults, overrides, and errors that name the key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from scheduler_daemon.settings import (
    ClusterConfig,
    ConfigError,
    Settings,
    load_clusters,
    load_settings,
    parse_http_addr,
)

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "file.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# --- load_settings ------------------------------------------------------------------------------


def test_defaults_are_the_contract() -> None:
    s = load_settings(environ={})
    assert s == Settings()
    assert s.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert s.http_addr == "127.0.0.1:8600"
    assert (s.intake_exchange, s.intake_queue, s.intake_routing_key) == ("rmcs.jobs", "rmcs.jobs.submit", "submit")
    assert (s.dead_letter_exchange, s.dead_letter_queue) == ("rmcs.jobs.dlx", "rmcs.jobs.dead")
    assert s.events_exchange == "rmcs.events"
    assert s.max_priority == 10


def test_settings_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
        amqp_url: amqp://u:p@broker:5672/vhost
        window_size: 3
        probe_interval_s: 0.25
        placement_strategy: pack
        default_resources: {CPU: 2, memory: 0.5}
    """)
    s = load_settings(path, environ={})
    assert s.amqp_url == "amqp://u:p@broker:5672/vhost"
    assert s.window_size == 3 and isinstance(s.window_size, int)
    assert s.probe_interval_s == 0.25
    assert s.placement_strategy == "pack"
    assert s.default_resources == {"CPU": 2.0, "memory": 0.5}
    assert s.http_addr == "127.0.0.1:8600"  # untouched keys keep defaults


def test_empty_settings_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    with pytest.raises(ConfigError, match="top level"):
        load_settings(path, environ={})


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "window_size: 3\nhttp_addr: 127.0.0.1:9000\n")
    env = {
        "RMCS_WINDOW_SIZE": "5",
        "RMCS_AMQP_URL": "amqps://x:y@h:5671/v",
        "RMCS_PROBE_TIMEOUT_S": "0.5",
        "RMCS_DEFAULT_RESOURCES": "{CPU: 0.5}",
        "UNRELATED": "1",
    }
    s = load_settings(path, environ=env)
    assert s.window_size == 5
    assert s.http_addr == "127.0.0.1:9000"
    assert s.amqp_url == "amqps://x:y@h:5671/v"
    assert s.probe_timeout_s == 0.5
    assert s.default_resources == {"CPU": 0.5}


def test_environment_without_file() -> None:
    s = load_settings(environ={"RMCS_HTTP_ADDR": "0.0.0.0:1234"})
    assert s.http_addr == "0.0.0.0:1234"
    assert parse_http_addr(s.http_addr) == ("0.0.0.0", 1234)


def test_unknown_key_names_it(tmp_path: Path) -> None:
    path = write(tmp_path, "window_size: 3\nwindow_sise: 4\n")
    with pytest.raises(ConfigError, match="window_sise"):
        load_settings(path, environ={})


@pytest.mark.parametrize(("key", "value"), [
    ("window_size", "'many'"),
    ("window_size", "2.5"),
    ("window_size", "true"),
    ("window_size", "0"),
    ("max_priority", "300"),
    ("probe_interval_s", "'soon'"),
    ("probe_interval_s", "-1"),
    ("probe_timeout_s", "0"),
    ("probe_timeout_s", ".nan"),
    ("probe_process_from", "-1"),
    ("probe_process_from", "'many'"),
    ("lost_after_s", ".inf"),
    ("snapshot_margin_s", "-0.5"),
    ("down_after_failures", "0"),
    ("up_after_successes", "0"),
    ("max_message_bytes", "10"),
    ("amqp_url", "'http://broker/'"),
    ("amqp_url", "5672"),
    ("http_addr", "'localhost'"),
    ("http_addr", "'localhost:http'"),
    ("http_addr", "'localhost:70000'"),
    ("placement_strategy", "random"),
    ("log_level", "loud"),
    ("default_resources", "[1, 2]"),
    ("default_resources", "{CPU: -1}"),
    ("default_resources", "{CPU: lots}"),
])
def test_bad_value_in_file_names_the_key(tmp_path: Path, key: str, value: str) -> None:
    path = write(tmp_path, f"{key}: {value}\n")
    with pytest.raises(ConfigError, match=key):
        load_settings(path, environ={})


@pytest.mark.parametrize(("key", "value"), [
    ("window_size", "eight"),
    ("window_size", "-3"),
    ("probe_interval_s", "fast"),
    ("placement_strategy", "random"),
    ("amqp_url", "redis://localhost"),
    ("http_addr", "nohost"),
    ("default_resources", "[CPU]"),
])
def test_bad_value_in_environment_names_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={f"RMCS_{key.upper()}": value})
    assert key in str(info.value).lower()


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml", environ={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "a: [1, 2\n"), environ={})


# --- load_clusters ------------------------------------------------------------------------------

SEED_000 = """
clusters:
  cpu_cluster:
    head_address: "123.456.789.0:10001"
    runtime_env:
      pip:
        - "numpy"
        - "pandas"
      env_vars:
        - "PYTHONPATH=/opt/code"
        - "EXTRA=a=b"
    prefer: true
    weight: 1.0
    tags: ["cpu", "stable"]

  gpu_cluster:
    head_address: "123.456.789.1:10002"
    runtime_env:
      pip:
        - "torch"
        - "torchvision"
      conda:
        dependencies: ["cudatoolkit=11.7"]
    prefer: false
    weight: 0.8
    tags: ["gpu", "experimental"]
"""


def test_seed_000_file(tmp_path: Path) -> None:
    cpu, gpu = load_clusters(write(tmp_path, SEED_000), environ={})
    assert isinstance(cpu, ClusterConfig)
    assert cpu.name == "cpu_cluster" and gpu.name == "gpu_cluster"
    assert cpu.head_address == "123.456.789.0:10001"
    assert cpu.dashboard_url == "http://123.456.789.0:8265"
    assert gpu.dashboard_url == "http://123.456.789.1:8265"
    assert cpu.prefer is True and gpu.prefer is False
    assert cpu.weight == 1.0 and gpu.weight == 0.8
    assert cpu.tags == frozenset({"cpu", "stable"})
    assert gpu.tags == frozenset({"gpu", "experimental"})
    # env_vars as a list of NAME=value becomes a mapping (split at the first '=').
    assert cpu.runtime_env["env_vars"] == {"PYTHONPATH": "/opt/code", "EXTRA": "a=b"}
    assert cpu.runtime_env["pip"] == ["numpy", "pandas"]
    assert gpu.runtime_env["conda"] == {"dependencies": ["cudatoolkit=11.7"]}
    assert "env_vars" not in gpu.runtime_env
    assert cpu.headers == {} and gpu.headers == {}


def test_dashboard_url_and_headers(tmp_path: Path) -> None:
    path = write(tmp_path, """
        clusters:
          a:
            dashboard_url: "https://ray.example.com:8443/"
            headers:
              Authorization: "Bearer ${RAY_TOKEN}"
              X-Plain: "plain"
            runtime_env:
              env_vars: {K: "v"}
          b-2:
            head_address: "10.0.0.2"
    """)
    a, b = load_clusters(path, environ={"RAY_TOKEN": "s3cret"})
    assert a.dashboard_url == "https://ray.example.com:8443"  # trailing slash dropped
    assert a.headers == {"Authorization": "Bearer s3cret", "X-Plain": "plain"}
    assert a.runtime_env == {"env_vars": {"K": "v"}}
    assert a.prefer is False and a.weight == 1.0 and a.tags == frozenset()
    assert b.name == "b-2" and b.dashboard_url == "http://10.0.0.2:8265"


@pytest.mark.parametrize(("head", "url"), [
    ("10.0.0.5:6379", "http://10.0.0.5:8265"),
    ("headnode", "http://headnode:8265"),
    ("ray://10.0.0.5:10001", "http://10.0.0.5:8265"),
    ("[::1]:6379", "http://[::1]:8265"),
])
def test_dashboard_url_default_is_the_head_host(tmp_path: Path, head: str, url: str) -> None:
    (c,) = load_clusters(_cluster_file(tmp_path, f'head_address: "{head}"\n'), environ={})
    assert c.dashboard_url == url
    assert c.head_address == head


def test_missing_environment_variable_in_headers(tmp_path: Path) -> None:
    path = write(tmp_path, """
        clusters:
          a:
            dashboard_url: "http://127.0.0.1:8265"
            headers: {Authorization: "Bearer ${RAY_TOKEN_NOT_SET}"}
    """)
    with pytest.raises(ConfigError) as info:
        load_clusters(path, environ={})
    assert "RAY_TOKEN_NOT_SET" in str(info.value)
    assert "clusters.a.headers.Authorization" in str(info.value)


def _cluster_file(tmp_path: Path, body: str, name: str = "c") -> Path:
    return write(tmp_path, f"clusters:\n  {name}:\n" + textwrap.indent(textwrap.dedent(body), "    "))


@pytest.mark.parametrize(("body", "key"), [
    ("head_address: h:1\nweight: 0\n", "clusters.c.weight"),
    ("head_address: h:1\nweight: -2\n", "clusters.c.weight"),
    ("head_address: h:1\nweight: heavy\n", "clusters.c.weight"),
    ("head_address: h:1\nweight: true\n", "clusters.c.weight"),
    ("head_address: h:1\nweight: .inf\n", "clusters.c.weight"),
    ("head_address: h:1\ntags: gpu\n", "clusters.c.tags"),
    ("head_address: h:1\ntags: [1, 2]\n", "clusters.c.tags"),
    ("head_address: h:1\nprefer: yes-please\n", "clusters.c.prefer"),
    ("head_address: h:1\nprefer: 1\n", "clusters.c.prefer"),
    ("head_address: h:1\nheadres: {}\n", "headres"),
    ("head_address: h:1\nheaders: [a]\n", "clusters.c.headers"),
    ("head_address: h:1\nheaders: {A: 1}\n", "clusters.c.headers"),
    ("head_address: 6379\n", "clusters.c.head_address"),
    ("prefer: true\n", "clusters.c"),
    ("dashboard_url: ftp://h\n", "clusters.c.dashboard_url"),
    ("dashboard_url: 'http://'\n", "clusters.c.dashboard_url"),
    ("head_address: h:1\nruntime_env: [pip]\n", "clusters.c.runtime_env"),
    ("head_address: h:1\nruntime_env: {env_vars: [NOEQUALS]}\n", "clusters.c.runtime_env.env_vars"),
    ("head_address: h:1\nruntime_env: {env_vars: {A: 1}}\n", "clusters.c.runtime_env.env_vars"),
])
def test_bad_cluster_entry_names_the_key(tmp_path: Path, body: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_clusters(_cluster_file(tmp_path, body), environ={})
    assert key in str(info.value)


@pytest.mark.parametrize("name", ["bad name", "a.b", "ü", "a/b", "gpu\n", "a#b", "a*"])
def test_bad_cluster_name(tmp_path: Path, name: str) -> None:
    quoted = name.replace("\n", "\\n")
    with pytest.raises(ConfigError) as info:
        load_clusters(_cluster_file(tmp_path, "head_address: h:1\n", name=f'"{quoted}"'), environ={})
    assert "cluster names must match" in str(info.value)


@pytest.mark.parametrize("text", [
    "",
    "clusters: {}\n",
    "clusters: [a, b]\n",
    "other: 1\n",
    "clusters:\n  a: {head_address: 'h:1'}\nextra: 1\n",
    "clusters:\n  a: just-a-string\n",
])
def test_bad_clusters_file_shape(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_clusters(write(tmp_path, text), environ={})


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="extra"):
        load_clusters(write(tmp_path, "clusters:\n  a: {head_address: 'h:1'}\nextra: 1\n"), environ={})


def test_repository_clusters_file_loads() -> None:
    clusters = load_clusters(REPO / "clusters.yaml", environ={})
    names = [c.name for c in clusters]
    assert names == ["cpu_cluster", "gpu_cluster"]
    for c in clusters:
        assert c.dashboard_url.startswith("http://")
        assert c.weight > 0
        assert c.runtime_env["env_vars"]["RMCS_CLUSTER"] == c.name
