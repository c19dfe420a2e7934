"""Starts the real steward-server binary in dev mode for the SDK's end-to-end tests.

The tests import the SDK as installed (run-tests.sh installs the wheel into a fresh venv), never
from the source tree. The binary is STEWARD_SERVER_BIN (default: target/debug/steward-server of this repository).
The `server` fixture is parametrized: every test using it runs once against a plaintext
`dev` server and once against `dev --tls` (the clients then trust the dev CA the server
generated). Each mode gets one fresh server on an ephemeral port with its own data directory;
pytest runs the modes one after the other.
"""

from __future__ import annotations

import atexit
import email
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from steward_client import Steward, auth_pb2
from steward_client.aio import AsyncSteward

REPO = Path(__file__).resolve().parents[3]
OWNER_EMAIL = "owner@example.com"
OWNER_PASSWORD = "correct horse battery staple 42!"

# Each pattern ends with the character that follows the value on its line, so that a line still
# being written is never taken for the whole value.
_LISTENING = re.compile(r"all services listening on ([^\s,]+:\d+)[\s,]")
_LINK_TOKEN = re.compile(r"set-password\?token=([^\s\"'<>&]+)\s")
_TLS_CA = re.compile(r"TLS on; clients trust the dev CA: (\S+)\n")
MODES = ("plaintext", "tls")
_BOOTSTRAP_FAILED = re.compile(r"could not bootstrap[^\n]*")


def server_bin() -> Path:
    configured = os.environ.get("STEWARD_SERVER_BIN")
    path = Path(configured) if configured else REPO / "target" / "debug" / "steward-server"
    if not path.is_absolute():
        path = Path.cwd() / path
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.exit(
            f"steward-server binary not found at {path}: build it with "
            "`cargo build -p steward-server` or set STEWARD_SERVER_BIN",
            returncode=2,
        )
    return path


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the server gets SIGKILL when this test process dies, however it dies."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Server:
    mode: str  # "plaintext" or "tls"
    target: str  # host:port
    data_dir: Path
    log_path: Path
    owner_invite_token: str
    process: subprocess.Popen
    ca_pem: bytes | None = None  # the dev CA, in TLS mode

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def invite_token(self, address: str, timeout: float = 20.0) -> str:
        """The token of the newest invite email sent to `address` (a .eml file under mail/)."""
        mail_dir = self.data_dir / "mail"
        deadline = time.monotonic() + timeout
        while True:
            newest = None
            for path in mail_dir.glob("*.eml") if mail_dir.is_dir() else ():
                message = email.message_from_bytes(path.read_bytes())
                if address.lower() not in str(message.get("To", "")).lower():
                    continue
                key = (path.stat().st_mtime_ns, path.name)
                if newest is None or key > newest[0]:
                    newest = (key, path)
            if newest is not None:
                found = re.search(r"token=([A-Za-z0-9_\-.~%]+)", newest[1].read_text(errors="replace"))
                if found:
                    return found.group(1)
            if time.monotonic() > deadline:
                raise AssertionError(f"no invite email for {address} in {mail_dir}")
            time.sleep(0.1)

    def client(self, access_token: str | None = None, **options) -> Steward:
        """A new connection: plaintext, or in TLS mode https:// trusting the dev CA."""
        return Steward(**self.settings(access_token, **options))

    def aclient(self, access_token: str | None = None, **options) -> AsyncSteward:
        """A new asyncio connection (create it in the event loop that uses it)."""
        return AsyncSteward(**self.settings(access_token, **options))

    def settings(self, access_token: str | None = None, **options) -> dict:
        options = dict(options, access_token=access_token)
        options.setdefault("default_timeout", 30)
        if self.mode == "tls":
            return dict(options, target=f"https://{self.target}", root_certificates=self.ca_pem)
        return dict(options, target=self.target)


def start_server(mode: str, data_dir: Path, config: dict | None = None) -> Server:
    """Starts `steward-server dev` ("plaintext" or "tls") in `data_dir`, with `config` as extra
    STEWARD_* environment variables (e.g. a short access-token lifetime)."""
    tls = mode == "tls"
    binary = server_bin()
    log_path = data_dir.parent / (data_dir.name + ".log")
    env = dict(os.environ, NO_COLOR="1", RUST_LOG=os.environ.get("RUST_LOG", "info"))
    # The server reads every STEWARD_* variable as configuration and refuses unknown keys.
    env.pop("STEWARD_SERVER_BIN", None)
    env.update(config or {})
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(binary), "dev", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir),
             "--owner-email", OWNER_EMAIL, *(["--tls"] if tls else [])],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    # Never leave the server behind, even when pytest dies before the teardown.
    atexit.register(lambda: process.poll() is None and process.kill())
    target = token = ca_path = None
    deadline = time.monotonic() + 90
    while target is None or token is None or (tls and ca_path is None):
        text = log_path.read_text(errors="replace")
        if (m := _LISTENING.search(text)) is not None:
            target = m.group(1)
        if (m := _LINK_TOKEN.search(text)) is not None:
            token = m.group(1)
        if (m := _TLS_CA.search(text)) is not None:
            ca_path = Path(m.group(1))
        failed = _BOOTSTRAP_FAILED.search(text)
        if failed or process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.exit(
                f"steward-server ({mode}) did not start "
                f"({failed.group(0) if failed else f'exit {process.poll()}'}); "
                f"output in {log_path}:\n"
                + "\n".join(text.splitlines()[-30:]),
                returncode=3,
            )
        time.sleep(0.05)
    return Server(mode, target, data_dir, log_path, token, process,
                  ca_path.read_bytes() if tls else None)


def stop_server(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session", params=MODES)
def server(request, tmp_path_factory) -> Server:
    mode = request.param
    started = start_server(mode, tmp_path_factory.mktemp(f"steward-data-{mode}"))
    try:
        yield started
    finally:
        stop_server(started)


@dataclass
class Owner:
    client: Steward
    name: str
    organization: str


@pytest.fixture(scope="session")
def owner(server: Server) -> Owner:
    """The organization's owner: accepts the invite printed by `dev`, then signs in."""
    client = server.client()
    accepted = client.auth.AcceptInvite(
        auth_pb2.AcceptInviteRequest(token=server.owner_invite_token, password=OWNER_PASSWORD)
    )
    signed_in = client.sign_in(OWNER_EMAIL, OWNER_PASSWORD)
    assert signed_in.WhichOneof("result") == "tokens", signed_in
    assert signed_in.tokens.token_type == "Bearer"
    assert signed_in.tokens.scope == auth_pb2.TOKEN_SCOPE_FULL
    from steward_client import admin_pb2

    profile = client.admin.GetProfile(admin_pb2.GetProfileRequest()).profile
    assert profile.administrator.name == accepted.administrator
    yield Owner(client, accepted.administrator, profile.organization.name)
    client.close()
