"""Sessions that outlive their access tokens, pages, and retries, against a real server whose
access tokens live a few seconds (sync and asyncio clients)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid

import grpc
import pytest

from steward_client import Steward, admin_pb2, administrator_pb2, auth_pb2

from conftest import OWNER_EMAIL, OWNER_PASSWORD, start_server, stop_server

# Short enough to expire several times in a test, long enough for a sign-in on a busy machine;
# no leeway, so that an expired token is refused at once.
TTL = 3
SHORT_TOKENS = {"STEWARD_AUTH__ACCESS_TOKEN_TTL_SECS": str(TTL), "STEWARD_AUTH__LEEWAY_SECS": "0"}


@pytest.fixture(scope="module")
def short(tmp_path_factory):
    """A plaintext server with TTL-second access tokens, its owner signed in (sync)."""
    server = start_server("plaintext", tmp_path_factory.mktemp("steward-short-ttl"), SHORT_TOKENS)
    try:
        with server.client() as owner:
            owner.auth.AcceptInvite(
                auth_pb2.AcceptInviteRequest(token=server.owner_invite_token, password=OWNER_PASSWORD)
            )
            owner.sign_in(OWNER_EMAIL, OWNER_PASSWORD)
            server.organization = owner.admin.GetProfile(admin_pb2.GetProfileRequest()).profile.organization.name
        yield server
    finally:
        stop_server(server)


def test_sessions_outlive_their_access_tokens(short):
    """Sync and asyncio clients call for three token lifetimes: they refresh before expiry,
    every call succeeds, and the tokens they dropped are refused by then."""
    deadline = time.monotonic() + 3 * TTL
    async_tokens: list = []
    async_error: list = []

    async def async_calls():
        async with short.aclient() as client:
            await client.sign_in(OWNER_EMAIL, OWNER_PASSWORD)
            assert client.has_refresh_token
            while time.monotonic() < deadline:
                await client.admin.GetProfile(admin_pb2.GetProfileRequest())
                if client.access_token not in async_tokens:
                    async_tokens.append(client.access_token)
                await asyncio.sleep(0.1)

    def run_async():
        try:
            asyncio.run(async_calls())
        except BaseException as err:  # reported by the main thread
            async_error.append(err)

    thread = threading.Thread(target=run_async)
    thread.start()
    tokens = []
    calls = 0
    with short.client() as client:
        client.sign_in(OWNER_EMAIL, OWNER_PASSWORD)
        assert client.has_refresh_token
        lifetime = client.access_token_expire_time.timestamp() - time.time()
        assert 0 < lifetime <= TTL + 1, lifetime
        while time.monotonic() < deadline:
            client.admin.GetProfile(admin_pb2.GetProfileRequest())
            client.admin.ListAdministrators(admin_pb2.ListAdministratorsRequest(parent=short.organization))
            calls += 2
            if client.access_token not in tokens:
                tokens.append(client.access_token)
            time.sleep(0.1)
    thread.join()
    assert not async_error, async_error
    # Refreshed at about half of each lifetime: at least once per lifetime.
    assert len(tokens) >= 3, f"{len(tokens)} access tokens over {calls} calls"
    assert len(async_tokens) >= 3, f"asyncio: {len(async_tokens)} access tokens"
    # The first tokens have expired by now: the server refuses them.
    with short.client(tokens[0]) as stale:
        with pytest.raises(grpc.RpcError) as caught:
            stale.admin.GetProfile(admin_pb2.GetProfileRequest())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _blind(client) -> float:
    """Makes the client believe its token never expires; returns when it really does."""
    expiry = client._session.expiry
    client._session.expiry = time.time() + 3600
    return expiry


def test_a_refused_token_is_refreshed_and_the_call_retried_once(short):
    with short.client() as client:
        client.sign_in(OWNER_EMAIL, OWNER_PASSWORD)
        token = client.access_token
        time.sleep(max(0.0, _blind(client) - time.time()) + 0.5)
        # The server refuses the expired token; the SDK refreshes and retries, the call succeeds.
        client.admin.GetProfile(admin_pb2.GetProfileRequest())
        assert client.access_token != token

        # Without a refresh token (a token set by hand) the refusal is the caller's.
        with short.client(token) as bare:
            with pytest.raises(grpc.RpcError) as caught:
                bare.admin.GetProfile(admin_pb2.GetProfileRequest())
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    async def asyncio_client():
        async with short.aclient() as client:
            await client.sign_in(OWNER_EMAIL, OWNER_PASSWORD)
            token = client.access_token
            await asyncio.sleep(max(0.0, _blind(client) - time.time()) + 0.5)
            await client.admin.GetProfile(admin_pb2.GetProfileRequest())
            assert client.access_token != token

    asyncio.run(asyncio_client())


def test_lists_are_iterated_over_every_page(short):
    emails = [f"pager-{i:02}@example.com" for i in range(12)]
    with short.client() as client:
        client.sign_in(OWNER_EMAIL, OWNER_PASSWORD)
        for email in emails:
            client.admin.CreateAdministrator(
                admin_pb2.CreateAdministratorRequest(
                    parent=short.organization,
                    administrator=administrator_pb2.Administrator(email=email, role_name="roles/read-only"),
                    request_id=str(uuid.uuid4()),
                )
            )
        pages = []
        list_administrators = client.admin.ListAdministrators

        def counted(request, **kwargs):
            pages.append(request.page_token)
            return list_administrators(request, **kwargs)

        client.admin.ListAdministrators = counted
        listed = [a.email for a in client.administrators.list(parent=short.organization, page_size=5)]
        assert [e for e in listed if e.startswith("pager-")] == emails
        assert OWNER_EMAIL in listed and len(listed) == len(set(listed)) == len(emails) + 1
        assert len(pages) == 3 and pages[0] == "" and all(pages[1:]), pages
        # The generic form, with another filter.
        runners = client.paginate(
            list_administrators,
            admin_pb2.ListAdministratorsRequest(
                parent=short.organization, page_size=4, filter="role = ROLE_READ_ONLY"
            ),
        )
        assert sorted(a.email for a in runners) == emails

    async def asyncio_client():
        async with short.aclient() as client:
            await client.sign_in(OWNER_EMAIL, OWNER_PASSWORD)
            listed = [a.email async for a in client.administrators.list(parent=short.organization, page_size=5)]
            assert [e for e in listed if e.startswith("pager-")] == emails

    asyncio.run(asyncio_client())


class FlakyProxy:
    """A TCP proxy in front of the server whose next `refuse` connections are reset at once."""

    def __init__(self, upstream: str):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.refuse = 0
        self.refused = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                refuse = self.refuse > 0
                if refuse:
                    self.refuse -= 1
                    self.refused += 1
            if refuse:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                conn.close()
                continue
            upstream = socket.create_connection(self.upstream)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


# Retries waiting long enough (0.5 s, then more) for the channel to reconnect (every 0.1 s here)
# past the refused connections.
PATIENT = {
    "maxAttempts": 5,
    "initialBackoff": "0.5s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 100),
]


def test_idempotent_calls_are_retried_when_unavailable(short):
    proxy = FlakyProxy(short.target)
    try:
        with short.client() as owner:
            owner.sign_in(OWNER_EMAIL, OWNER_PASSWORD)
            token = owner.access_token
        # Each client's first connections are reset: UNAVAILABLE, then retried.
        proxy.refuse = 2
        with Steward(proxy.target, access_token=token, retry_policy=PATIENT, options=FAST_RECONNECT,
                     default_timeout=30) as client:
            profile = client.admin.GetProfile(admin_pb2.GetProfileRequest()).profile
            assert profile.administrator.email == OWNER_EMAIL
        assert proxy.refused == 2

        async def asyncio_client():
            from steward_client.aio import AsyncSteward

            async with AsyncSteward(proxy.target, access_token=token, retry_policy=PATIENT,
                                    options=FAST_RECONNECT, default_timeout=30) as client:
                return (await client.admin.GetProfile(admin_pb2.GetProfileRequest())).profile

        proxy.refuse, proxy.refused = 2, 0
        assert asyncio.run(asyncio_client()).administrator.email == OWNER_EMAIL
        assert proxy.refused == 2

        # Without retries, the same outage fails the call.
        proxy.refuse, proxy.refused = 2, 0
        with Steward(proxy.target, access_token=token, retry_policy=None, options=FAST_RECONNECT,
                     default_timeout=30) as client:
            with pytest.raises(grpc.RpcError) as caught:
                client.admin.GetProfile(admin_pb2.GetProfileRequest())
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        # Nor is a call with side effects retried.
        proxy.refuse, proxy.refused = 2, 0
        with Steward(proxy.target, access_token=token, retry_policy=PATIENT, options=FAST_RECONNECT,
                     default_timeout=30) as client:
            with pytest.raises(grpc.RpcError) as caught:
                client.admin.CreateAdministrator(admin_pb2.CreateAdministratorRequest(
                    parent=short.organization,
                    administrator=administrator_pb2.Administrator(email="never@example.com", role_name="roles/read-only"),
                ))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        proxy.close()
