"""Who may do what: job owners, admins and the HTTP API's tokens.

- A job's owner is the broker user that published it: the AMQP `user_id` property, which
  RabbitMQ refuses unless it names the connection's own user. A message without one belongs to
  `default_owner`.
- A stop is honoured from the job's owner or an admin (`admins`), and refused for anyone else.
  A stop request over the broker speaks for its `user_id` (or `default_owner`); one over the HTTP
  API for the user its bearer token names.
- The HTTP API's tokens come from `api_tokens_file` (YAML, user name -> token). With tokens,
  every mutating request needs one. Without, the API must listen on a loopback address only, and
  its callers are trusted as admins: whoever can reach it runs on the daemon's host.

Pure apart from reading the token file; tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import yaml

from producers.wire import CALLER_ADMIN_HEADER, CALLER_HEADER  # noqa: F401 (who a relayed stop is for)

from .settings import USER_NAME, ConfigError, Settings, parse_http_addr

MIN_TOKEN_CHARS = 16
LOCAL = "local"


@dataclass(frozen=True)
class Caller:
    """Who asks: a broker user or an API token's user. `admin` may stop any job."""

    name: str
    admin: bool = False


def broker_caller(user_id: str | None, settings: Settings) -> Caller:
    name = user_id or settings.default_owner
    return Caller(name, name in settings.admins)


def token_caller(name: str, settings: Settings) -> Caller:
    return Caller(name, name in settings.admins)


TRUSTED_LOCAL = Caller(LOCAL, admin=True)


def may_stop(caller: Caller, owner: str | None) -> bool:
    """The owner or an admin. A job recorded before owners existed (owner None) is anyone's."""
    return caller.admin or owner is None or caller.name == owner


def refusal(caller: Caller, owner: str | None) -> str:
    return (f"{caller.name!r} may not stop this job: only its owner {owner!r} or an admin may; "
            "the job goes on")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve to anything


def load_api_tokens(path: str) -> dict[str, str]:
    """The token file as token -> user name. ConfigError for anything wrong, without the tokens."""
    if not path:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"invalid setting 'api_tokens_file': cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError:
        raise ConfigError(f"invalid setting 'api_tokens_file': {path} is not valid YAML") from None
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(f"invalid setting 'api_tokens_file': {path} must map user names to tokens")
    tokens: dict[str, str] = {}
    for user, token in data.items():
        if not isinstance(user, str) or not USER_NAME.fullmatch(user):
            raise ConfigError(f"invalid setting 'api_tokens_file': {path}: {user!r} is not a user name")
        if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS or not token.isprintable() or " " in token:
            raise ConfigError(f"invalid setting 'api_tokens_file': {path}: the token of {user!r} must be a string "
                              f"of at least {MIN_TOKEN_CHARS} printable characters without spaces")
        if token in tokens:
            raise ConfigError(f"invalid setting 'api_tokens_file': {path}: {user!r} and {tokens[token]!r} "
                              "have the same token")
        tokens[token] = user
    return tokens


def check_exposure(settings: Settings, tokens: Mapping[str, str]) -> None:
    """Refuse an API reachable from other hosts without tokens."""
    host, _ = parse_http_addr(settings.http_addr)
    if settings.api_reads_need_token and not tokens:
        raise ConfigError("invalid setting 'api_reads_need_token': reads need tokens, so set api_tokens_file")
    if not tokens and not is_loopback(host):
        raise ConfigError(f"invalid setting 'http_addr': {settings.http_addr} is not a loopback address, so the "
                          "HTTP API needs bearer tokens: set api_tokens_file (see docs/security.md)")


def token_user(header: str | None, tokens: Mapping[str, str]) -> str | None:
    """The user whose token the `Authorization: Bearer <token>` header carries, or None."""
    if not header:
        return None
    scheme, _, given = header.partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        return None
    found = None
    for token, user in tokens.items():  # every token compared, in constant time each
        if hmac.compare_digest(token.encode(), given.encode("utf-8", "replace")):
            found = user
    return found
