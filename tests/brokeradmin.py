"""A vhost of its own on the real RabbitMQ, with rmcs's least-privilege users, for one test module.

Made with `rabbitmqctl` (the broker must run on this host; tests fail without it) under unique
names (`rmcs-sec-<random>`), and deleted afterwards. `guest` gets full rights on the new vhost
only, for the tests' own set-up and observation; nothing else of the broker is changed.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from dataclasses import dataclass, field, replace
from typing import Iterator
from urllib.parse import quote

import orjson

from scheduler_daemon.permissions import ROLES, definitions
from scheduler_daemon.settings import Settings


def rabbitmqctl(*args: str, stdin: bytes | None = None) -> str:
    try:
        done = subprocess.run(["rabbitmqctl", "--quiet", *args], input=stdin, capture_output=True, timeout=60)
    except FileNotFoundError:
        raise AssertionError("rabbitmqctl is not installed: these tests need the broker's admin tool") from None
    if done.returncode != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args[:2])} failed: {done.stderr.decode()[-500:]}")
    return done.stdout.decode()


@dataclass
class BrokerUsers:
    vhost: str
    tag: str
    passwords: dict[str, str] = field(default_factory=dict)   # user name -> password
    roles: dict[str, str] = field(default_factory=dict)       # role -> user name

    def url(self, user: str) -> str:
        return f"amqp://{quote(user, safe='')}:{self.passwords[user]}@127.0.0.1:5672/{quote(self.vhost, safe='')}"

    def guest_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:5672/{quote(self.vhost, safe='')}"

    def add_users(self, settings: Settings, role: str, *names: str) -> list[str]:
        """More users of `role` (for instance several producers), named `<tag>-<name>`."""
        out = []
        for name in names:
            user = f"{self.tag}-{name}"
            password = secrets.token_hex(12)
            defs = definitions(settings, self.vhost, {user: role}, {user: password})
            rabbitmqctl("import_definitions", "--format", "json", stdin=orjson.dumps(defs))
            self.passwords[user] = password
            out.append(user)
        return out


@contextlib.contextmanager
def broker_users(settings: Settings) -> Iterator[BrokerUsers]:
    """A fresh vhost with one user per role (as `deploy/rabbitmq/apply` makes them)."""
    tag = f"rmcs-sec-{secrets.token_hex(4)}"
    users = BrokerUsers(vhost=tag, tag=tag)
    users.roles = {role: f"{tag}-{role}" for role in ROLES}
    pw = {role: secrets.token_hex(12) for role in ROLES}
    try:
        defs = definitions(settings, tag, {users.roles[r]: r for r in ROLES}, {users.roles[r]: pw[r] for r in ROLES})
        rabbitmqctl("import_definitions", "--format", "json", stdin=orjson.dumps(defs))
        rabbitmqctl("set_permissions", "-p", tag, "guest", ".*", ".*", ".*")
        users.passwords = {users.roles[r]: pw[r] for r in ROLES}
        yield users
    finally:
        with contextlib.suppress(AssertionError):
            rabbitmqctl("delete_vhost", tag)
        for user in {*users.roles.values(), *users.passwords}:
            with contextlib.suppress(AssertionError):
                rabbitmqctl("delete_user", user)


def settings_in(users: BrokerUsers, settings: Settings, role: str = "daemon") -> Settings:
    """`settings` with the broker URL of `role`'s user on the vhost."""
    return replace(settings, amqp_url=users.url(users.roles[role]))
