"""Least-privilege RabbitMQ users for rmcs: three roles, as RabbitMQ definitions.

RabbitMQ grants each user, per vhost, three regular expressions over object names: `configure`
(declare, delete), `write` (publish to an exchange; bind a queue, which also needs `read` on the
exchange) and `read` (consume, get, purge a queue; bind from an exchange). Topic permissions
narrow `write` (publish) and `read` (bind) on a topic exchange to routing keys that match.
Server-named queues (`amq.gen-...`) are what producers and dashboards use to watch events.

- `producer`: publishes jobs (intake exchange) and stop requests (`control.stop` on the event
  exchange), and reads events through queues of its own. It cannot consume the intake queue,
  publish a lifecycle event or declare, bind or delete anything of rmcs's.
- `daemon`: owns the topology: consumes the intake queue, publishes events, retries, stop answers
  and dead letters.
- `dashboard`: reads events through queues of its own; publishes nothing.

`python -m scheduler_daemon.permissions --vhost rmcs [--config rmcs.yaml]` prints the
definitions for the names in the settings (`rabbitmqctl import_definitions` takes them);
passwords come from `RMCS_BROKER_PASSWORD_<ROLE>` and are stored only as salted hashes.
`deploy/rabbitmq/apply` runs both steps; `deploy/rabbitmq/definitions.json` is the output for the
default names and vhost `rmcs`, with no passwords (set them with `rabbitmqctl change_password`).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import secrets
import sys
from dataclasses import dataclass
from typing import Any, Mapping

import orjson

from .broker import alternate_exchange_policy, unrouted_name
from .leadership import leader_queue
from .queueconf import queue_of_key
from .settings import ConfigError, Settings, load_settings

SERVER_NAMED = r"amq\.gen-.*"
DEFAULT_EXCHANGE = "amq.default"  # the name permissions use for the default exchange ("")
ROLES = ("daemon", "producer", "dashboard")


@dataclass(frozen=True)
class Role:
    configure: str
    write: str
    read: str
    topic_write: str    # routing keys the role may publish on the event exchange
    topic_read: str     # binding keys the role may bind with on the event exchange
    description: str


def _any(*names: str) -> str:
    """A regex matching exactly these object names (and server-named queues for `amq.gen-.*`,
    the status service's reply queues for `reply_queues(s)`)."""
    parts = [n if n == SERVER_NAMED or n.endswith(_REPLY_SUFFIX) else re.escape(n) for n in names]
    return "^(" + "|".join(parts) + ")$"


NOTHING = "^$"
_REPLY_SUFFIX = r"\.reply\.[0-9a-f]{32}"


def reply_queues(s: Settings) -> str:
    """The status service's reply queues for the stops of its API: `<status_queue>.reply.<hex>`."""
    return re.escape(s.status_queue) + _REPLY_SUFFIX


def roles(s: Settings) -> dict[str, Role]:
    """The three roles for the broker names in `s`."""
    queues = (*(queue_of_key(s.intake_queue, q.name) for q in s.queues), s.dead_letter_queue, s.status_queue,
              s.control_queue, leader_queue(s), unrouted_name(s))
    exchanges = (s.intake_exchange, s.dead_letter_exchange, s.events_exchange, unrouted_name(s))
    return {
        "daemon": Role(
            # The reply queues and control.stop: its status service asks it to stop jobs. Server-named:
            # each status service's live stream in a failover group on shared state.
            configure=_any(*exchanges, *queues, reply_queues(s), SERVER_NAMED),
            write=_any(*exchanges, *queues, DEFAULT_EXCHANGE, reply_queues(s), SERVER_NAMED),
            read=_any(*exchanges, *queues, reply_queues(s), SERVER_NAMED),
            topic_write=r"^(job\..+|cluster\..+|control\.stop|control\.stop\.answer)$",
            topic_read=r"^(job\.#|cluster\.#|control\.stop)$",
            description="the scheduler daemon: declares the topology, consumes the intake, publishes events",
        ),
        "producer": Role(
            configure=_any(SERVER_NAMED),
            write=_any(s.intake_exchange, s.events_exchange, SERVER_NAMED),
            read=_any(s.events_exchange, SERVER_NAMED),
            topic_write=r"^control\.stop$",
            topic_read=".*",
            description="a service that submits jobs, asks for stops and watches events in queues of its own",
        ),
        "dashboard": Role(
            configure=_any(SERVER_NAMED),
            write=_any(SERVER_NAMED),
            read=_any(s.events_exchange, SERVER_NAMED),
            topic_write=NOTHING,
            topic_read=".*",
            description="read-only: watches events in queues of its own",
        ),
    }


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def definitions(s: Settings, vhost: str, users: Mapping[str, str],
                passwords: Mapping[str, str] | None = None) -> dict[str, Any]:
    """RabbitMQ definitions: the vhost, and for each user (`users` maps user name to role) its
    permissions and topic permissions on the event exchange. A user without a password (in
    `passwords`, by user name) gets an empty hash: it cannot log in until
    `rabbitmqctl change_password` gives it one."""
    passwords = passwords or {}
    specs = roles(s)
    out: dict[str, Any] = {"vhosts": [{"name": vhost}], "users": [], "permissions": [], "topic_permissions": []}
    for user, role in users.items():
        if role not in specs:
            raise ValueError(f"unknown role {role!r}; known: {', '.join(ROLES)}")
        spec = specs[role]
        pw = passwords.get(user)
        out["users"].append({"name": user, "password_hash": password_hash(pw) if pw else "",
                             "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []})
        out["permissions"].append({"user": user, "vhost": vhost, "configure": spec.configure,
                                   "write": spec.write, "read": spec.read})
        out["topic_permissions"].append({"user": user, "vhost": vhost, "exchange": s.events_exchange,
                                         "write": spec.topic_write, "read": spec.topic_read})
    name, pattern, definition = alternate_exchange_policy(s)  # messages to no queue are kept (docs/queues.md)
    out["policies"] = [{"vhost": vhost, "name": name, "pattern": pattern, "apply-to": "exchanges", "priority": 0,
                        "definition": orjson.loads(definition)}]
    return out


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m scheduler_daemon.permissions",
        description="Print RabbitMQ definitions with rmcs's least-privilege users (daemon, producer, "
                    "dashboard) for `rabbitmqctl import_definitions`. Passwords are read from "
                    "RMCS_BROKER_PASSWORD_DAEMON, _PRODUCER and _DASHBOARD; a user without one gets none.")
    parser.add_argument("--config", default=None, help="daemon settings file, for the broker names")
    parser.add_argument("--vhost", default="rmcs", help="the vhost (default: rmcs)")
    parser.add_argument("--user-prefix", default="rmcs-", help="user names are PREFIX<role> (default: rmcs-)")
    parser.add_argument("--user", default=None, metavar="NAME",
                        help="only this user, with the rights of --role (for one more producer, say); "
                             "its password from RMCS_BROKER_PASSWORD")
    parser.add_argument("--role", default="producer", choices=ROLES, help="the role of --user (default: producer)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config, environ)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.user is not None:
        users = {args.user: args.role}
        passwords = {args.user: environ["RMCS_BROKER_PASSWORD"]} if environ.get("RMCS_BROKER_PASSWORD") else {}
    else:
        users = {f"{args.user_prefix}{role}": role for role in ROLES}
        passwords = {f"{args.user_prefix}{role}": environ[f"RMCS_BROKER_PASSWORD_{role.upper()}"] for role in ROLES
                     if environ.get(f"RMCS_BROKER_PASSWORD_{role.upper()}")}
    sys.stdout.write(orjson.dumps(definitions(settings, args.vhost, users, passwords),
                                  option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
