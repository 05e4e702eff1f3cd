import pytest

from support import Events, publish, running_daemon, sid, make_settings

pytestmark = pytest.mark.usefixtures("rabbitmq")


async def test_one_job_runs_end_to_end(tmp_path, ray_clusters):
    s = make_settings(tmp_path)
    async with running_daemon(s, ray_clusters):
        async with Events(s) as ev:
            job = sid()
            await publish(s, {"submission_id": job, "entrypoint": "/bin/sleep 1"})
            await ev.wait_final([job], timeout=60)
            assert ev.states(job) == ["ACCEPTED", "DISPATCHED", "RUNNING", "SUCCEEDED"], ev.of(job)
