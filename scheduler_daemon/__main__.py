"""python -m scheduler_daemon --clusters PATH: arguments -> settings -> logging -> run."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys

from . import logs
from .access import check_exposure, load_api_tokens
from .settings import ConfigError, load_clusters, load_settings

EXIT_LOST_LEADERSHIP = 75  # EX_TEMPFAIL


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scheduler-daemon", description="rmcs: multi-cluster scheduler for Ray jobs")
    parser.add_argument("--clusters", default="clusters.yaml", help="clusters file (default: clusters.yaml)")
    parser.add_argument("--config", default=None, help="daemon settings file (YAML); RMCS_* variables override it")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        clusters = load_clusters(args.clusters)
        check_exposure(settings, load_api_tokens(settings.api_tokens_file))
    except ConfigError as exc:
        print(f"scheduler-daemon: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    from .daemon import Daemon

    daemon = Daemon(settings, clusters)
    try:
        asyncio.run(daemon.run_until_stopped())
    except OSError as exc:  # e.g. the HTTP port is taken, or the broker refuses us
        print(f"scheduler-daemon: {exc}", file=sys.stderr)
        return 1
    # A leader that lost its place exits non-zero: its supervisor starts it again as a standby.
    return EXIT_LOST_LEADERSHIP if daemon.lost_leadership else 0


def declare_main(argv: list[str] | None = None) -> int:
    """rmcs-declare: declare the broker topology so producers can publish before the daemon runs."""
    parser = argparse.ArgumentParser(prog="rmcs-declare", description="declare rmcs's RabbitMQ topology")
    parser.add_argument("--config", default=None)
    parser.add_argument("--policies", choices=("print", "apply"), default=None,
                        help="the queue-bounding RabbitMQ policies (docs/security.md): print them as definitions "
                             "for `rabbitmqctl import_definitions`, or apply them with rabbitmqctl")
    parser.add_argument("--vhost", default="/", help="the vhost of the policies (default: /)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"rmcs-declare: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.policies is not None:
        import orjson

        from . import policies

        if args.policies == "print":
            print(orjson.dumps(policies.definitions(settings, args.vhost), option=orjson.OPT_INDENT_2).decode())
            return 0
        try:
            policies.apply(settings, args.vhost)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            print(f"rmcs-declare: {exc}", file=sys.stderr)
            return 1
        print(f"applied policies {', '.join(p['name'] for p in policies.policies(settings, args.vhost))} "
              f"on vhost {args.vhost}")
        return 0
    from .broker import declare

    asyncio.run(declare(settings))
    print(f"declared {settings.intake_exchange}, {settings.intake_queue}, {settings.dead_letter_exchange}, "
          f"{settings.dead_letter_queue}, {settings.events_exchange}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
