"""Test PKI and a RabbitMQ node of the test's own with a TLS listener.

The PKI (a CA, a server certificate for 127.0.0.1/localhost, a client certificate) is made at
test time with `cryptography`. The broker is a second RabbitMQ node started in the foreground
from the installed `rabbitmq-server`, with its own node name, ports, data, logs, cookie (its own
HOME) and config; it never touches the shared node on 5672. It is stopped by its own process
group.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # the real script, not the su wrapper


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_file: Path  # a CA that signed nothing here: verification against it must fail


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, name: str, *,
          server: bool) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_key, ca = _ca("rmcs test CA")
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    s_key, s_cert = _leaf(ca_key, ca, "localhost", server=True)
    (directory / "server.pem").write_bytes(s_cert.public_bytes(pem))
    c_key, c_cert = _leaf(ca_key, ca, "rmcs-client", server=False)
    (directory / "client.pem").write_bytes(c_cert.public_bytes(pem))
    _, other = _ca("some other CA")
    (directory / "other-ca.pem").write_bytes(other.public_bytes(pem))
    return Pki(directory / "ca.pem", directory / "server.pem", _write_key(s_key, directory / "server.key"),
               directory / "client.pem", _write_key(c_key, directory / "client.key"), directory / "other-ca.pem")


def server_ssl_context(pki: Pki, *, require_client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_file))
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    return ctx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TlsBroker:
    """A RabbitMQ node of our own: TLS on `tls_port` (client certificate required when
    `require_client_cert`), no plain listener, one user `user`/`password` with all rights on "/"."""

    directory: Path
    pki: Pki
    user: str
    password: str
    require_client_cert: bool = False
    tls_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def url(self, user: str | None = None, password: str | None = None) -> str:
        return f"amqps://{user or self.user}:{password or self.password}@127.0.0.1:{self.tls_port}/"

    def start(self, timeout: float = 90.0) -> "TlsBroker":
        if not os.path.exists(RABBITMQ_SERVER):
            raise RuntimeError(f"{RABBITMQ_SERVER} is missing: install the rabbitmq-server package")
        d = self.directory
        for sub in ("home", "mnesia", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        self.tls_port = free_port()
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq-env.conf").write_text("")  # keep the shared node's /etc/rabbitmq/rabbitmq-env.conf out
        (d / "rabbitmq.conf").write_text("\n".join([
            "listeners.tcp = none",
            f"listeners.ssl.default = 127.0.0.1:{self.tls_port}",
            f"ssl_options.cacertfile = {self.pki.ca_file}",
            f"ssl_options.certfile = {self.pki.server_cert}",
            f"ssl_options.keyfile = {self.pki.server_key}",
            f"ssl_options.verify = {'verify_peer' if self.require_client_cert else 'verify_none'}",
            f"ssl_options.fail_if_no_peer_cert = {'true' if self.require_client_cert else 'false'}",
            f"default_user = {self.user}",
            f"default_pass = {self.password}",
            "loopback_users = none",
            "log.console = false",
            "log.file.level = info",
            "",
        ]))
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(d / "home"),  # Erlang makes this node's own cookie here
            "RABBITMQ_NODENAME": f"rmcs-tls-{self.tls_port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        self.process = subprocess.Popen([RABBITMQ_SERVER], env=env, cwd=str(d), start_new_session=True,
                                        stdout=open(d / "stdout.log", "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the TLS RabbitMQ node exited with {self.process.returncode}:\n{self.diagnostics()}")
            if self._handshakes():
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the TLS RabbitMQ node did not listen on {self.tls_port} within {timeout}s:\n"
                           f"{self.diagnostics()}")

    def _handshakes(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_file))
        if self.require_client_cert:
            ctx.load_cert_chain(str(self.pki.client_cert), str(self.pki.client_key))
        try:
            with socket.create_connection(("127.0.0.1", self.tls_port), timeout=2) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    tls.sendall(b"AMQP\x00\x00\x09\x01")
                    return bool(tls.recv(7))  # connection.start frame: the broker is up
        except (OSError, ssl.SSLError):
            return False

    def diagnostics(self) -> str:
        out = []
        for path in [self.directory / "stdout.log", *sorted((self.directory / "log").glob("*.log"))]:
            if path.exists():
                out.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def stop(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        # The node's own process group: the start script, beam and its port programs.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        try:  # stray children (erl_child_setup, inet_gethost) share the group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

