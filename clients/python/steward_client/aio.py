"""The asyncio client: :class:`AsyncSteward`, the same as :class:`steward_client.Steward` over
``grpc.aio``. Calls are awaited, lists are iterated with ``async for``::

    from steward_client import admin_pb2
    from steward_client.aio import AsyncSteward

    async with AsyncSteward("127.0.0.1:50051") as steward:
        await steward.sign_in("owner@example.com", "a long and unusual passphrase")
        profile = (await steward.admin.GetProfile(admin_pb2.GetProfileRequest())).profile
        async for administrator in steward.administrators.list(parent=profile.organization.name):
            print(administrator.email)

Tokens, renewal, retries and TLS settings work as in :class:`steward_client.Steward` (they
share that logic); errors are :class:`grpc.aio.AioRpcError` (a :class:`grpc.RpcError`), which
:func:`steward_client.error_details` decodes too.
"""

from __future__ import annotations

import asyncio
import datetime
import os
from typing import Any, AsyncIterator, Callable, Mapping, Optional, Sequence, Tuple

import grpc
from grpc import aio

from . import _core
from ._core import DEFAULT_RETRY_POLICY, PUBLIC_METHODS
from .gen.steward.admin.v1 import (
    admin_pb2_grpc,
    administrator_pb2,
    organization_pb2_grpc,
    role_pb2_grpc,
    service_account_pb2_grpc,
)
from .gen.steward.audit.v1 import audit_pb2_grpc
from .gen.steward.auth.v1 import auth_pb2, auth_pb2_grpc
from .gen.steward.billing.v1 import billing_pb2_grpc
from .gen.steward.commands.v1 import agent_pb2_grpc, commands_pb2_grpc, systems_pb2_grpc

__all__ = ["AsyncSteward"]


class _Interceptor:
    """What the four interceptors share: the token (renewed first when due) and the timeout."""

    def __init__(self, steward: "AsyncSteward"):
        self._steward = steward

    async def _token(self, details) -> Optional[str]:
        if _core.has_own_authorization(details.metadata):
            return None
        return await self._steward._token(renew=_core.method_name(details.method) not in PUBLIC_METHODS)

    def _details(self, details, unary: bool, token: Optional[str]):
        entries, _ = _core.with_authorization(details.metadata, token)
        timeout = details.timeout
        if timeout is None and unary:
            timeout = self._steward._default_timeout
        return details._replace(metadata=aio.Metadata(*entries), timeout=timeout)


class _UnaryUnary(_Interceptor, aio.UnaryUnaryClientInterceptor):
    """Also retries once on ``UNAUTHENTICATED`` after renewing the token."""

    async def intercept_unary_unary(self, continuation, details, request):
        token = await self._token(details)
        call = await continuation(self._details(details, True, token), request)
        if token is None or _core.method_name(details.method) in PUBLIC_METHODS:
            return call
        if await call.code() != grpc.StatusCode.UNAUTHENTICATED:
            return call
        renewed = await self._steward._renew_after_refusal(token)
        if renewed is None:
            return call
        return await continuation(self._details(details, True, renewed), request)


class _UnaryStream(_Interceptor, aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._details(details, False, await self._token(details)), request)


class _StreamUnary(_Interceptor, aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(
            self._details(details, True, await self._token(details)), request_iterator
        )


class _StreamStream(_Interceptor, aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(
            self._details(details, False, await self._token(details)), request_iterator
        )


class AsyncAdministrators:
    """``steward.administrators``: every administrator of an organization, page after page."""

    def __init__(self, steward: "AsyncSteward"):
        self._steward = steward

    def list(
        self, parent: str, *, page_size: int = 0, filter: str = "", order_by: str = "", **call: Any
    ) -> AsyncIterator[administrator_pb2.Administrator]:
        """``async for`` over ``AdminService.ListAdministrators``, all pages."""
        request = _core.list_administrators_request(parent, page_size, filter, order_by)
        return self._steward.paginate(self._steward.admin.ListAdministrators, request, **call)


class AsyncSteward:
    """A ``grpc.aio`` connection to Steward: one channel, one stub per public service.

    Takes the arguments of :class:`steward_client.Steward` and behaves the same way, with
    awaitable calls. Create it inside a running event loop; close it with ``await close()``
    or ``async with``.
    """

    def __init__(
        self,
        target: str,
        *,
        access_token: Optional[str] = None,
        tls: Optional[bool] = None,
        root_certificates: Optional[bytes] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
        options: Optional[Sequence[Tuple[str, Any]]] = None,
        default_timeout: Optional[float] = None,
        api_key: Optional[str] = None,
        token_refresh_margin: float = 60.0,
        retry_policy: Optional[Mapping[str, Any]] = DEFAULT_RETRY_POLICY,
    ):
        self._session = _core.Session(access_token, api_key, token_refresh_margin)
        self.target, credentials = _core.channel_target(target, tls, root_certificates, credentials)
        self.tls = credentials is not None
        self._default_timeout = default_timeout
        # One renewal at a time; created lazily, in the loop that uses it.
        self._renew_lock: Optional[asyncio.Lock] = None
        options = _core.channel_options(options, retry_policy)
        interceptors = [_UnaryUnary(self), _UnaryStream(self), _StreamUnary(self), _StreamStream(self)]
        if credentials is None:
            self.channel = aio.insecure_channel(self.target, options=options, interceptors=interceptors)
            self._raw_channel = aio.insecure_channel(self.target, options=options)
        else:
            self.channel = aio.secure_channel(
                self.target, credentials, options=options, interceptors=interceptors
            )
            self._raw_channel = aio.secure_channel(self.target, credentials, options=options)
        # Renewals go over a channel without the interceptors that ask for them.
        self._raw_auth = auth_pb2_grpc.AuthServiceStub(self._raw_channel)
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.organizations = organization_pb2_grpc.OrganizationServiceStub(self.channel)
        self.roles = role_pb2_grpc.RoleServiceStub(self.channel)
        self.service_accounts = service_account_pb2_grpc.ServiceAccountServiceStub(self.channel)
        self.billing = billing_pb2_grpc.BillingServiceStub(self.channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(self.channel)
        self.commands = commands_pb2_grpc.CommandServiceStub(self.channel)
        self.systems = systems_pb2_grpc.SystemServiceStub(self.channel)
        self.agents = agent_pb2_grpc.AgentServiceStub(self.channel)
        self.administrators = AsyncAdministrators(self)

    @classmethod
    def from_env(
        cls,
        target: Optional[str] = None,
        *,
        environ: Optional[Mapping[str, str]] = None,
        **kwargs: Any,
    ) -> "AsyncSteward":
        """As :meth:`steward_client.Steward.from_env`."""
        target, kwargs = _core.from_env_arguments(
            target, os.environ if environ is None else environ, kwargs
        )
        return cls(target, **kwargs)

    # -- tokens -----------------------------------------------------------------

    def _lock(self) -> asyncio.Lock:
        if self._renew_lock is None:
            self._renew_lock = asyncio.Lock()
        return self._renew_lock

    async def _token(self, renew: bool = True) -> Optional[str]:
        if not (renew and self._session.due()):
            return self._session.access_token
        async with self._lock():
            if not self._session.due():  # renewed meanwhile
                return self._session.access_token
            try:
                return await self._renew()
            except Exception:
                if self._session.unexpired():
                    return self._session.access_token
                raise

    async def _renew(self) -> str:
        method, request, credential = self._session.renewal()
        response = await getattr(self._raw_auth, method)(request, timeout=self._default_timeout)
        self._session.accept(response.tokens, credential)
        return self._session.access_token

    async def _renew_after_refusal(self, refused: str) -> Optional[str]:
        async with self._lock():
            if not self._session.renewable:
                return None
            current = self._session.access_token
            if current and current != refused:
                return current
            try:
                return await self._renew()
            except Exception:
                return None

    @property
    def access_token(self) -> Optional[str]:
        return self._session.access_token

    @property
    def access_token_expire_time(self) -> Optional[datetime.datetime]:
        expiry = self._session.expiry
        if expiry is None:
            return None
        return datetime.datetime.fromtimestamp(expiry, tz=datetime.timezone.utc)

    @property
    def uses_api_key(self) -> bool:
        return self._session.api_key is not None

    @property
    def has_refresh_token(self) -> bool:
        return self._session.refresh_token is not None

    def set_access_token(self, token: Optional[str]) -> None:
        self._session.set_token(token)

    def set_tokens(self, tokens: auth_pb2.TokenSet) -> None:
        self._session.set_token(None)
        self._session.accept(tokens)

    async def sign_in_with_api_key(self, api_key: str) -> auth_pb2.ExchangeApiKeyResponse:
        key = _core.ApiKey(api_key)
        async with self._lock():
            previous = self._session.snapshot()
            self._session.set_token(None)
            self._session.api_key = key
            try:
                response = await self._raw_auth.ExchangeApiKey(
                    auth_pb2.ExchangeApiKeyRequest(api_key=key.reveal()), timeout=self._default_timeout
                )
                self._session.accept(response.tokens, key)
                return response
            except BaseException:
                self._session.restore(previous)
                raise

    async def sign_in(
        self, email: str, password: str, organization: str = ""
    ) -> auth_pb2.SignInResponse:
        response = await self.auth.SignIn(
            auth_pb2.SignInRequest(email=email, password=password, organization=organization)
        )
        if response.WhichOneof("result") == "tokens":
            self.set_tokens(response.tokens)
        return response

    # -- pages ------------------------------------------------------------------

    async def paginate(
        self, method: Callable[..., Any], request: Any, *, items: Optional[str] = None, **call: Any
    ) -> AsyncIterator[Any]:
        """``async for`` over every item of a ``List*`` call, all pages (see ``Steward.paginate``)."""
        request_copy = type(request)()
        request_copy.CopyFrom(request)
        field = items
        while True:
            page = await method(request_copy, **call)
            field = field or _core.items_field(type(page))
            for item in getattr(page, field):
                yield item
            if not page.next_page_token:
                return
            request_copy.page_token = page.next_page_token

    # -- lifecycle --------------------------------------------------------------

    async def close(self) -> None:
        await self.channel.close()
        await self._raw_channel.close()

    def __repr__(self) -> str:
        return f"<AsyncSteward {self.target} tls={self.tls} {self._session.describe()}>"

    async def __aenter__(self) -> "AsyncSteward":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()
