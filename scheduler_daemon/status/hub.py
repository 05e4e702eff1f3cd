"""In-process fan-out of lifecycle events to live subscribers (the HTTP event stream).

Each subscriber has a bounded queue. A subscriber that stops reading loses the oldest
events (and is told how many with a `dropped` marker) instead of slowing anyone down or
growing the daemon's memory.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping


def topic_regex(pattern: str) -> re.Pattern[str]:
    """AMQP topic pattern (`*` one word, `#` any words) as a regular expression."""
    words = pattern.split(".")
    parts = []
    for word in words:
        if word == "#":
            parts.append(r"(?:[^.]+(?:\.[^.]+)*)?")
        elif word == "*":
            parts.append(r"[^.]+")
        else:
            parts.append(re.escape(word))
    regex = r"\.".join(parts).replace(r"\.(?:[^.]+(?:\.[^.]+)*)?", r"(?:\.[^.]+)*").replace(
        r"(?:[^.]+(?:\.[^.]+)*)?\.", r"(?:[^.]+\.)*")
    return re.compile(f"^{regex}$")


@dataclass
class Subscription:
    pattern: re.Pattern[str]
    queue: asyncio.Queue[Mapping[str, Any]]
    dropped: int = 0


@dataclass
class EventHub:
    maxsize: int = 1000
    _subs: dict[int, Subscription] = field(default_factory=dict)

    def publish(self, event: Mapping[str, Any]) -> None:
        key = str(event.get("event", ""))
        for sub in self._subs.values():
            if not sub.pattern.match(key):
                continue
            if sub.queue.full():
                sub.queue.get_nowait()
                sub.dropped += 1
            sub.queue.put_nowait(event)

    async def subscribe(self, pattern: str = "#") -> AsyncIterator[Mapping[str, Any]]:
        sub = Subscription(topic_regex(pattern), asyncio.Queue(self.maxsize))
        key = id(sub)
        self._subs[key] = sub
        try:
            while True:
                event = await sub.queue.get()
                if sub.dropped:
                    count, sub.dropped = sub.dropped, 0  # before yielding: drops go on meanwhile
                    yield {"event": "dropped", "count": count}
                yield event
        finally:
            del self._subs[key]

    def __len__(self) -> int:
        return len(self._subs)
