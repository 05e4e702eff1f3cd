"""RabbitMQ policies that bound the queues rmcs does not read itself (docs/security.md).

Any dashboard or producer user may bind a server-named queue (`amq.gen-...`) to the event
exchange. One it never reads grows with every event until RabbitMQ's memory alarm blocks every
publisher, the daemon included. The dead-letter queue grows with every refused job. So:

- `rmcs-event-queues` (on `^amq\\.gen-`): at most EVENT_QUEUE_MAX_LENGTH messages (and
  EVENT_QUEUE_MAX_BYTES), the oldest dropped first, and a queue unused (no consumer, no get)
  for EVENT_QUEUE_EXPIRES_S is deleted;
- `rmcs-dead-letters` (on the dead-letter queue): at most DEAD_LETTER_MAX_LENGTH messages, the
  oldest dropped first.

A queue's own `x-max-length` or `x-expires` cannot raise these: RabbitMQ applies the lower of
the two. Policies need the broker's admin: `rmcs-declare --policies print` writes them as
definitions for `rabbitmqctl import_definitions`, `--policies apply` runs that command.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

from .settings import Settings

EVENT_QUEUE_MAX_LENGTH = 100_000
EVENT_QUEUE_MAX_BYTES = 256 * 1024 * 1024
EVENT_QUEUE_EXPIRES_S = 3600
DEAD_LETTER_MAX_LENGTH = 100_000
PRIORITY = 10  # above a vhost's usual catch-all policies


def policies(s: Settings, vhost: str, *, event_max_length: int = EVENT_QUEUE_MAX_LENGTH,
             dead_max_length: int = DEAD_LETTER_MAX_LENGTH) -> list[dict[str, Any]]:
    return [
        {"vhost": vhost, "name": "rmcs-event-queues", "pattern": r"^amq\.gen-", "apply-to": "queues",
         "priority": PRIORITY, "definition": {
             "max-length": event_max_length, "max-length-bytes": EVENT_QUEUE_MAX_BYTES,
             "overflow": "drop-head", "expires": EVENT_QUEUE_EXPIRES_S * 1000}},
        {"vhost": vhost, "name": "rmcs-dead-letters", "pattern": f"^{re.escape(s.dead_letter_queue)}$",
         "apply-to": "queues", "priority": PRIORITY, "definition": {
             "max-length": dead_max_length, "overflow": "drop-head"}},
    ]


def definitions(s: Settings, vhost: str, **limits: int) -> dict[str, Any]:
    """The policies as RabbitMQ definitions (only `policies`: importing them changes nothing else)."""
    return {"policies": policies(s, vhost, **limits)}


def apply(s: Settings, vhost: str, **limits: int) -> None:
    """Import the policies with `rabbitmqctl` (run where it reaches the broker, as its admin)."""
    import orjson

    done = subprocess.run(["rabbitmqctl", "--quiet", "import_definitions", "--format", "json"],
                          input=orjson.dumps(definitions(s, vhost, **limits)), capture_output=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl import_definitions failed: {done.stderr.decode(errors='replace')[-500:]}")
