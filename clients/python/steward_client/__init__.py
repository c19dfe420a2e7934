"""Python client SDK for Steward's gRPC API.

The messages and stubs are generated from the protos (``buf generate``, see clients/README.md)
into ``steward_client.gen``; this module adds a thin :class:`Steward` wrapper that owns one
channel, attaches the access token to every call and renews it, retries idempotent calls on
``UNAVAILABLE``, pages through lists, and exposes one stub per public service::

    from steward_client import Steward, admin_pb2

    with Steward("127.0.0.1:50051") as steward:
        steward.sign_in("owner@example.com", "a long and unusual passphrase")
        profile = steward.admin.GetProfile(admin_pb2.GetProfileRequest()).profile
        for administrator in steward.administrators.list(parent=profile.organization.name):
            print(administrator.email)

The same with asyncio: :class:`steward_client.aio.AsyncSteward` (``grpc.aio``).

Over TLS, name the target ``https://host:port`` (or pass ``tls=True``) and, for a server whose
certificate is not signed by a public CA (``steward-server dev --tls``), the PEM of the CA to
trust: ``Steward("https://127.0.0.1:50051", root_certificates=open("ca.pem", "rb").read())``.

A program (a CI job) signs in as a service account with an API key instead: pass ``api_key=``
or call :meth:`Steward.from_env`, which reads ``STEWARD_API_KEY`` (and ``STEWARD_SERVER``,
``STEWARD_CA_FILE``). The key is never logged or shown in a ``repr``.

Errors are :class:`grpc.RpcError`; :func:`error_details` decodes the ``google.rpc`` details
(``PreconditionFailure``, ``BadRequest``, ``ErrorInfo``, ``RetryInfo``...) attached to them.
"""

from __future__ import annotations

import collections
import datetime
import os
import threading
from typing import Any, Callable, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar

import grpc

try:
    from .gen.steward.admin.v1 import (
        admin_pb2,
        admin_pb2_grpc,
        administrator_pb2,
        organization_pb2,
        organization_pb2_grpc,
        role_pb2,
        role_pb2_grpc,
        service_account_pb2,
        service_account_pb2_grpc,
    )
    from .gen.steward.audit.v1 import audit_pb2, audit_pb2_grpc
    from .gen.steward.auth.v1 import auth_pb2, auth_pb2_grpc
    from .gen.steward.billing.v1 import billing_pb2, billing_pb2_grpc
    from .gen.steward.commands.v1 import (
        agent_pb2,
        agent_pb2_grpc,
        commands_pb2,
        commands_pb2_grpc,
        systems_pb2,
        systems_pb2_grpc,
    )
except ImportError as exc:  # pragma: no cover - only without generated code
    raise ImportError(
        "steward_client.gen is missing: run clients/generate.sh python first"
    ) from exc

from . import _core
from ._core import (
    API_KEY_VAR,
    CA_FILE_VAR,
    DEFAULT_RETRY_POLICY,
    DEFAULT_TARGET,
    IDEMPOTENT_METHODS,
    PUBLIC_METHODS,
    SERVER_VAR,
    error_details,
    service_config,
)

__all__ = [
    "Steward",
    "error_details",
    "service_config",
    "API_KEY_VAR",
    "SERVER_VAR",
    "CA_FILE_VAR",
    "DEFAULT_TARGET",
    "DEFAULT_RETRY_POLICY",
    "IDEMPOTENT_METHODS",
    "PUBLIC_METHODS",
    "admin_pb2",
    "administrator_pb2",
    "organization_pb2",
    "role_pb2",
    "service_account_pb2",
    "audit_pb2",
    "auth_pb2",
    "billing_pb2",
    "agent_pb2",
    "commands_pb2",
    "systems_pb2",
]

_T = TypeVar("_T")
_UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


class _ClientCallDetails(
    collections.namedtuple(
        "_ClientCallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _AuthInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Sends the access token (renewed first when due), and retries a unary call once on
    ``UNAUTHENTICATED`` after renewing it. A call that carries its own ``authorization`` (an
    agent's credential on ``AgentService.OpenStream``) is left as it is."""

    def __init__(self, steward: "Steward"):
        self._steward = steward

    def _details(self, details, unary: bool, token: Optional[str]) -> grpc.ClientCallDetails:
        metadata, _ = _core.with_authorization(details.metadata, token)
        timeout = details.timeout
        if timeout is None and unary:
            timeout = self._steward._default_timeout
        return _ClientCallDetails(
            details.method,
            timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def _token(self, details) -> Optional[str]:
        method = _core.method_name(details.method)
        if _core.has_own_authorization(details.metadata):
            return None
        return self._steward._token(renew=method not in PUBLIC_METHODS)

    def intercept_unary_unary(self, continuation, details, request):
        token = self._token(details)
        outcome = continuation(self._details(details, True, token), request)
        method = _core.method_name(details.method)
        if token is None or method in PUBLIC_METHODS or outcome.code() != _UNAUTHENTICATED:
            return outcome
        renewed = self._steward._renew_after_refusal(token)
        if renewed is None:
            return outcome
        return continuation(self._details(details, True, renewed), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details, False, self._token(details)), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details, True, self._token(details)), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details, False, self._token(details)), request_iterator)


class Administrators:
    """``steward.administrators``: every administrator of an organization, page after page."""

    def __init__(self, steward: "Steward"):
        self._steward = steward

    def list(
        self, parent: str, *, page_size: int = 0, filter: str = "", order_by: str = "", **call: Any
    ) -> Iterator[administrator_pb2.Administrator]:
        """Iterates ``AdminService.ListAdministrators`` over all pages (``page_size`` each, the
        server's default when 0), following ``next_page_token``. ``call`` goes to each call
        (``timeout=``, ``metadata=``)."""
        request = _core.list_administrators_request(parent, page_size, filter, order_by)
        return self._steward.paginate(self._steward.admin.ListAdministrators, request, **call)


class Steward:
    """A connection to Steward: one channel, one stub per public service.

    ``target`` is ``host:port`` (any grpc target), ``http://host:port`` or
    ``https://host:port``. The channel is plaintext unless one of these asks for TLS:

    - an ``https://`` target, or ``tls=True``: TLS, verifying the server against
      ``root_certificates`` (PEM bytes of the CA(s) to trust) or, when that is None,
      gRPC's default roots;
    - ``root_certificates`` alone also implies TLS;
    - ``credentials``, a ready :class:`grpc.ChannelCredentials` (e.g. for a client
      certificate), used as it is; it excludes ``root_certificates``.

    ``http://`` with ``tls=True`` (or TLS settings), and ``https://`` with
    ``tls=False``, raise :class:`ValueError`. ``options`` are grpc channel options.
    ``target`` keeps the grpc target (``host:port``, without scheme) and ``tls`` whether the
    channel uses TLS. ``default_timeout`` (seconds) applies to unary calls made without one.

    Tokens: after :meth:`sign_in` (or :meth:`set_tokens` with a ``TokenSet``) the client keeps
    the refresh token and calls ``RefreshSession`` before a call made less than
    ``token_refresh_margin`` seconds (default 60, at most half the token's lifetime) before the
    access token expires; with ``api_key=`` (a service account's key) it calls
    ``ExchangeApiKey`` the same way, and before the first call. A unary call refused with
    ``UNAUTHENTICATED`` (a token revoked or expired early) renews once and is retried once.
    When a renewal is refused while the current token has not expired yet, that token is still
    used (the next call tries again); otherwise the call that needed it fails with that error.
    One renewal at a time: concurrent calls wait for it. Neither the key nor the refresh token
    is ever logged, nor shown by ``repr``. :meth:`set_access_token` sends a token as it is.

    Retries: calls without side effects (:data:`IDEMPOTENT_METHODS`) failing with
    ``UNAVAILABLE`` are retried by gRPC itself, per the service config built from
    ``retry_policy`` (default :data:`DEFAULT_RETRY_POLICY`; None: no retries). Options that
    set ``grpc.service_config`` replace it.
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
        self._lock = threading.Lock()
        # Held while renewing, so that concurrent calls make one renewal.
        self._renew_lock = threading.Lock()
        self._default_timeout = default_timeout
        options = _core.channel_options(options, retry_policy)
        if credentials is None:
            raw = grpc.insecure_channel(self.target, options=options)
        else:
            raw = grpc.secure_channel(self.target, credentials, options=options)
        self._raw_channel = raw
        # Renewals go over the raw channel: public, and not through the interceptor that asks.
        self._raw_auth = auth_pb2_grpc.AuthServiceStub(raw)
        self.channel = grpc.intercept_channel(raw, _AuthInterceptor(self))
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
        self.administrators = Administrators(self)

    @classmethod
    def from_env(
        cls,
        target: Optional[str] = None,
        *,
        environ: Optional[Mapping[str, str]] = None,
        **kwargs: Any,
    ) -> "Steward":
        """A client acting as the service account whose API key is in ``STEWARD_API_KEY``.

        As the CLI: the server is ``target``, else ``STEWARD_SERVER``, else
        ``127.0.0.1:50051``; over TLS, unless ``root_certificates`` or ``credentials``
        is given, the CA in the PEM file ``STEWARD_CA_FILE`` (when set) is trusted.
        ``environ`` replaces ``os.environ``; the other arguments are the constructor's.
        An unset or empty ``STEWARD_API_KEY`` is a :class:`ValueError`. Nothing is sent
        until the first call.
        """
        target, kwargs = _core.from_env_arguments(
            target, os.environ if environ is None else environ, kwargs
        )
        return cls(target, **kwargs)

    # -- tokens -----------------------------------------------------------------

    def _token(self, renew: bool = True) -> Optional[str]:
        """The token for the next call; renewed first when due."""
        with self._lock:
            due = renew and self._session.due()
            token = self._session.access_token
        if not due:
            return token
        with self._renew_lock:
            with self._lock:
                # Another thread may have renewed (or the credentials changed) meanwhile.
                due = self._session.due()
                token = self._session.access_token
            if not due:
                return token
            try:
                return self._renew()
            except Exception:
                with self._lock:
                    if self._session.unexpired():
                        return self._session.access_token
                raise

    def _renew(self) -> str:
        """Renews the access token now (holds ``_renew_lock``): RefreshSession or ExchangeApiKey."""
        with self._lock:
            method, request, credential = self._session.renewal()
        response = getattr(self._raw_auth, method)(request, timeout=self._default_timeout)
        with self._lock:
            self._session.accept(response.tokens, credential)
            return self._session.access_token

    def _renew_after_refusal(self, refused: str) -> Optional[str]:
        """After ``refused`` got UNAUTHENTICATED: a renewed token to retry with, or None."""
        with self._renew_lock:
            with self._lock:
                if not self._session.renewable:
                    return None
                current = self._session.access_token
            if current and current != refused:
                return current  # renewed meanwhile
            try:
                return self._renew()
            except Exception:
                return None

    @property
    def access_token(self) -> Optional[str]:
        """The access token sent with every call, or None (the last one received; never renews)."""
        with self._lock:
            return self._session.access_token

    @property
    def access_token_expire_time(self) -> Optional[datetime.datetime]:
        """When the current access token expires (UTC), when the server said so; else None."""
        with self._lock:
            expiry = self._session.expiry
        if expiry is None:
            return None
        return datetime.datetime.fromtimestamp(expiry, tz=datetime.timezone.utc)

    @property
    def uses_api_key(self) -> bool:
        """Whether this client acts as a service account through an API key."""
        with self._lock:
            return self._session.api_key is not None

    @property
    def has_refresh_token(self) -> bool:
        """Whether this client holds a session's refresh token (after :meth:`sign_in`)."""
        with self._lock:
            return self._session.refresh_token is not None

    def set_access_token(self, token: Optional[str]) -> None:
        """Sets (or, with None, clears) the access token sent with every call, as it is: the
        client then has nothing to renew it with (no refresh token, no API key)."""
        with self._renew_lock, self._lock:
            self._session.set_token(token)

    def set_tokens(self, tokens: auth_pb2.TokenSet) -> None:
        """Uses a ``TokenSet`` (``VerifyMfa``'s, ``RefreshSession``'s), keeping its refresh token."""
        with self._renew_lock, self._lock:
            self._session.set_token(None)
            self._session.accept(tokens)

    def sign_in_with_api_key(self, api_key: str) -> auth_pb2.ExchangeApiKeyResponse:
        """Acts as the service account of ``api_key`` from now on.

        Trades the key for an access token at once (a refused key raises the
        :class:`grpc.RpcError`, ``UNAUTHENTICATED``, and changes nothing), then again
        whenever a call comes shortly before that token expires, as with ``api_key=``.
        Returns the ``ExchangeApiKeyResponse``.
        """
        key = _core.ApiKey(api_key)
        with self._renew_lock:
            with self._lock:
                previous = self._session.snapshot()
                self._session.set_token(None)
                self._session.api_key = key
            try:
                response = self._raw_auth.ExchangeApiKey(
                    auth_pb2.ExchangeApiKeyRequest(api_key=key.reveal()), timeout=self._default_timeout
                )
                with self._lock:
                    self._session.accept(response.tokens, key)
                return response
            except BaseException:
                with self._lock:
                    self._session.restore(previous)
                raise

    def sign_in(
        self, email: str, password: str, organization: str = ""
    ) -> auth_pb2.SignInResponse:
        """Signs in with email and password.

        When the answer carries tokens, they are used from then on (the refresh token too; an
        API key no longer). When it is an MFA challenge, complete it with ``auth.VerifyMfa``
        and call :meth:`set_tokens` with its ``tokens``.
        """
        response = self.auth.SignIn(
            auth_pb2.SignInRequest(email=email, password=password, organization=organization)
        )
        if response.WhichOneof("result") == "tokens":
            self.set_tokens(response.tokens)
        return response

    # -- pages ------------------------------------------------------------------

    def paginate(
        self, method: Callable[..., Any], request: Any, *, items: Optional[str] = None, **call: Any
    ) -> Iterator[Any]:
        """Iterates every item of a ``List*`` call over all pages, following ``next_page_token``::

            for command in steward.paginate(steward.commands.ListCommands,
                                            commands_pb2.ListCommandsRequest(parent=org)):
                ...

        ``items`` names the response's repeated field (default: its first repeated message
        field). ``call`` goes to each call (``timeout=``, ``metadata=``). Pages are fetched
        as the iteration reaches them.
        """
        request_copy = type(request)()
        request_copy.CopyFrom(request)
        field = items
        while True:
            page = method(request_copy, **call)
            field = field or _core.items_field(type(page))
            yield from getattr(page, field)
            if not page.next_page_token:
                return
            request_copy.page_token = page.next_page_token

    # -- lifecycle --------------------------------------------------------------

    def close(self) -> None:
        self._raw_channel.close()

    def __repr__(self) -> str:
        with self._lock:
            how = self._session.describe()
        return f"<Steward {self.target} tls={self.tls} {how}>"

    def __enter__(self) -> "Steward":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
