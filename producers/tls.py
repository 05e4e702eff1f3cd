"""TLS client contexts: the one place the daemon, the CLI and the producer helper build them.

Standard library only, so the producer helper can share it without depending on the daemon.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit


def client_context(ca_file: str = "", cert_file: str = "", key_file: str = "", *,
                   what: str = "server") -> ssl.SSLContext:
    """A verifying client context: the system CAs, or only `ca_file` when given; a client
    certificate from `cert_file` (and `key_file`, unless the key is in the certificate file).
    ValueError names the file that could not be loaded, never its contents."""
    if key_file and not cert_file:
        raise ValueError(f"{what}: a key file is given without a certificate file")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{what}: cannot load the CA bundle {ca_file}: {_why(exc)}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        try:
            # A password callback, so an encrypted key fails instead of prompting on a terminal.
            ctx.load_cert_chain(cert_file, key_file or None, password=lambda: b"")
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"{what}: cannot load the client certificate {cert_file}"
                             f"{' with key ' + key_file if key_file else ''}: {_why(exc)}") from None
    return ctx


def amqp_ssl_context(amqp_url: str, ca_file: str = "", cert_file: str = "",
                     key_file: str = "") -> ssl.SSLContext | None:
    """The context for an `amqps://` broker URL (None for `amqp://`). The CA and client
    certificate settings only make sense with amqps, so they are refused with amqp."""
    if urlsplit(amqp_url).scheme != "amqps":
        if ca_file or cert_file or key_file:
            raise ValueError("amqp_ca_file, amqp_cert_file and amqp_key_file need an amqps:// amqp_url")
        return None
    return client_context(ca_file, cert_file, key_file, what="broker TLS")


def amqp_connect_kwargs(amqp_url: str, ca_file: str = "", cert_file: str = "", key_file: str = "") -> dict[str, Any]:
    """Keyword arguments for `aio_pika.connect`/`connect_robust`."""
    ctx = amqp_ssl_context(amqp_url, ca_file, cert_file, key_file)
    return {"ssl_context": ctx} if ctx is not None else {}


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return getattr(exc, "reason", None) or type(exc).__name__
