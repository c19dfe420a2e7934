"""Starts the real steward-server binary in dev mode for the SDK's end-to-end tests.

The binary is STEWARD_SERVER_BIN (default: target/debug/steward-server of this repository).
Each test session gets one fresh server on an ephemeral port with its own data directory.
"""

from __future__ import annotations

import atexit
import email
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from steward_client import Steward, auth_pb2

REPO = Path(__file__).resolve().parents[3]
OWNER_EMAIL = "owner@example.com"
OWNER_PASSWORD = "correct horse battery staple 42!"

_LISTENING = re.compile(r"all services listening on (\S+:\d+)")
_LINK_TOKEN = re.compile(r"set-password\?token=([^\s\"'<>&]+)")
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


@dataclass
class Server:
    target: str
    data_dir: Path
    log_path: Path
    owner_invite_token: str
    process: subprocess.Popen

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

    def client(self, access_token: str | None = None) -> Steward:
        return Steward(self.target, access_token=access_token, default_timeout=30)


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    binary = server_bin()
    data_dir = tmp_path_factory.mktemp("steward-data")
    log_path = data_dir.parent / (data_dir.name + ".log")
    env = dict(os.environ, NO_COLOR="1", RUST_LOG=os.environ.get("RUST_LOG", "info"))
    # The server reads every STEWARD_* variable as configuration and refuses unknown keys.
    env.pop("STEWARD_SERVER_BIN", None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(binary), "dev", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir),
             "--owner-email", OWNER_EMAIL],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
    # Never leave the server behind, even when pytest dies before the teardown.
    atexit.register(lambda: process.poll() is None and process.kill())
    target = token = None
    deadline = time.monotonic() + 90
    while target is None or token is None:
        text = log_path.read_text(errors="replace")
        if (m := _LISTENING.search(text)) is not None:
            target = m.group(1)
        if (m := _LINK_TOKEN.search(text)) is not None:
            token = m.group(1)
        failed = _BOOTSTRAP_FAILED.search(text)
        if failed or process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.exit(
                f"steward-server did not start ({failed.group(0) if failed else f'exit {process.poll()}'}); "
                f"output in {log_path}:\n"
                + "\n".join(text.splitlines()[-30:]),
                returncode=3,
            )
        time.sleep(0.05)
    srv = Server(target, data_dir, log_path, token, process)
    yield srv
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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
