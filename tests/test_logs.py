"""Logs: every line written to stdout is one JSON object, the standard library's records too,
with quotes, newlines and tracebacks inside the JSON."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from support import delete_topology, make_settings

ROOT = Path(__file__).resolve().parent.parent
SAID = 'he said "hi"\nand left'


def json_lines(stdout: bytes) -> list[dict[str, Any]]:
    """Each line of the output as a JSON object; fails on the first line that is not one."""
    lines = []
    for raw in stdout.splitlines():
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise AssertionError(f"not a JSON line: {raw!r} ({exc})") from None
        assert isinstance(line, dict), raw
        lines.append(line)
    return lines


def test_stdlib_and_structlog_records_are_one_json_object_per_line() -> None:
    script = textwrap.dedent('''
        import logging
        import structlog
        from scheduler_daemon import logs

        logs.configure("info")
        lib = logging.getLogger("some.lib")
        lib.warning('he said "hi"\\nand left')
        lib.info("library noise below WARNING is left out")
        try:
            raise ValueError('bad "value"\\nhere')
        except ValueError:
            lib.exception('failed "badly"\\nindeed')
        structlog.get_logger("rmcs.test").info('ours "quoted"\\nover two lines', detail='x"\\ny')
    ''')
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr.decode()
    assert run.stderr == b""
    warning, failure, ours = json_lines(run.stdout)
    assert warning["event"] == SAID
    assert (warning["level"], warning["logger"]) == ("warning", "some.lib")
    assert warning["timestamp"].endswith("Z")
    assert failure["event"] == 'failed "badly"\nindeed'
    assert (failure["level"], failure["logger"]) == ("error", "some.lib")
    [exc] = failure["exception"]
    assert (exc["exc_type"], exc["exc_value"]) == ("ValueError", 'bad "value"\nhere')
    assert ours["event"] == 'ours "quoted"\nover two lines'
    assert (ours["detail"], ours["level"]) == ('x"\ny', "info")


# The daemon as `python -m scheduler_daemon` runs it, with a library of its own logging through the
# standard `logging` module from a thread once logging is configured, while the daemon starts and
# writes its own lines: warnings with quotes and newlines, an exception, and a Python warning.
DAEMON_WITH_A_CHATTY_LIBRARY = textwrap.dedent('''
    import logging
    import sys
    import threading
    import time
    import warnings

    from scheduler_daemon import __main__ as entry, logs

    configure = logs.configure

    def chatter():
        lib = logging.getLogger("some.lib")
        for i in range(50):
            lib.warning('%d: he said "hi"\\nand left', i)
            time.sleep(0.02)
        try:
            raise ValueError('bad "value"\\nhere')
        except ValueError:
            lib.exception('failed "badly"\\nindeed')
        warnings.warn('careful "now"\\nplease')

    def configure_then_chatter(level):
        configure(level)
        threading.Thread(target=chatter, name="chatter").start()

    logs.configure = configure_then_chatter
    sys.exit(entry.main(sys.argv[1:]))
''')


@pytest.mark.usefixtures("rabbitmq")
async def test_every_line_the_daemon_writes_to_stdout_is_one_json_object(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    clusters = tmp_path / "clusters.yaml"  # nothing answers there: the probes fail, and log it
    clusters.write_text(yaml.safe_dump({"clusters": {"nowhere": {"dashboard_url": "http://127.0.0.1:1"}}}))
    env = dict(os.environ, **{f"RMCS_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
                              for k, v in s.__dict__.items() if isinstance(v, (str, int, float))})
    env["RMCS_STATUS_SERVICE"] = "process"  # its child writes to the same stdout
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DAEMON_WITH_A_CHATTY_LIBRARY, "--clusters", str(clusters),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        output = asyncio.ensure_future(proc.communicate())
        await asyncio.sleep(3.0)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(output, 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await delete_topology(s)
    assert proc.returncode == 0, stderr.decode()
    lines = json_lines(stdout)
    events = [line["event"] for line in lines]
    assert "daemon started" in events and "daemon stopped" in events, events
    assert "status service started" in events and "status service stopped" in events, events
    said = [line for line in lines if line.get("logger") == "some.lib" and line["level"] == "warning"]
    assert [line["event"] for line in said] == [f"{i}: {SAID}" for i in range(50)]
    [failure] = [line for line in lines if line["event"] == 'failed "badly"\nindeed']
    assert failure["exception"][0]["exc_value"] == 'bad "value"\nhere'
    [warned] = [line for line in lines if line.get("logger") == "py.warnings"]
    assert 'UserWarning: careful "now"\nplease' in warned["event"]
