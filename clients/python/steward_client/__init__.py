"""Python client SDK for Steward's gRPC API.

The messages and stubs are generated from the protos by ``generate.sh`` into
``steward_client.gen``; this module adds a thin :class:`Steward` wrapper that owns
one channel, attaches the access token to every call, and exposes one stub per
public service::

    from steward_client import Steward, admin_pb2

    with Steward("127.0.0.1:50051") as steward:
        steward.sign_in("owner@example.com", "a long and unusual passphrase")
        profile = steward.admin.GetProfile(admin_pb2.GetProfileRequest()).profile
        page = steward.admin.ListAdministrators(
            admin_pb2.ListAdministratorsRequest(parent=profile.organization.name))

Over TLS, name the target ``https://host:port`` (or pass ``tls=True``) and, for a
server whose certificate is not signed by a public CA (``steward-server dev --tls``),
the PEM of the CA to trust::

    ca = open("data/tls/ca.pem", "rb").read()
    with Steward("https://127.0.0.1:50051", root_certificates=ca) as steward:
        ...

A program (a CI job) signs in as a service account with an API key instead: pass
``api_key=`` or call :meth:`Steward.from_env`, which reads ``STEWARD_API_KEY`` (and
``STEWARD_SERVER``, ``STEWARD_CA_FILE``). The key is traded for an access token
(``AuthService.ExchangeApiKey``) before the first call and again shortly before that
token expires; it is never logged or shown in a ``repr``::

    with Steward.from_env() as ci:
        ci.commands.ListCommands(commands_pb2.ListCommandsRequest(parent=org))

Errors are :class:`grpc.RpcError`; :func:`error_details` decodes the
``google.rpc`` details (``PreconditionFailure``, ``BadRequest``, ``ErrorInfo``,
``RetryInfo``...) that Steward attaches to them.
"""

from __future__ import annotations

import collections
import datetime
import os
import threading
import time
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

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
        "steward_client.gen is missing: run clients/python/generate.sh first"
    ) from exc

__all__ = [
    "Steward",
    "error_details",
    "API_KEY_VAR",
    "SERVER_VAR",
    "CA_FILE_VAR",
    "DEFAULT_TARGET",
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

_Metadata = Sequence[Tuple[str, Any]]

#: The environment variable :meth:`Steward.from_env` reads the API key from.
API_KEY_VAR = "STEWARD_API_KEY"
#: The environment variable :meth:`Steward.from_env` reads the server from (as the CLI does).
SERVER_VAR = "STEWARD_SERVER"
#: The environment variable :meth:`Steward.from_env` reads the CA file to trust from.
CA_FILE_VAR = "STEWARD_CA_FILE"
#: The server :meth:`Steward.from_env` uses when neither ``target`` nor ``STEWARD_SERVER`` is given.
DEFAULT_TARGET = "127.0.0.1:50051"


class _ApiKey:
    """A service account's API key (``stw_{key}_{secret}``); its ``repr`` never shows it."""

    __slots__ = ("_secret",)

    def __init__(self, secret: str):
        if not isinstance(secret, str):
            raise TypeError("api_key must be a str")
        secret = secret.strip()
        if not secret:
            raise ValueError("api_key is empty")
        self._secret = secret

    def reveal(self) -> str:
        return self._secret

    def __repr__(self) -> str:
        return "<api key redacted>"

    __str__ = __repr__

    def __reduce__(self):  # never pickled along with a client
        raise TypeError("an API key is not picklable")


class _ClientCallDetails(
    collections.namedtuple(
        "_ClientCallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _BearerInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call while a token is set.

    A call that already carries an ``authorization`` entry (for example an agent's
    credential on ``AgentService.OpenStream``) is left as it is.
    """

    def __init__(self, token: Callable[[], Optional[str]], default_timeout: Optional[float]):
        self._token = token
        self._default_timeout = default_timeout

    def _details(
        self, details: grpc.ClientCallDetails, unary: bool = False
    ) -> grpc.ClientCallDetails:
        token = self._token()
        metadata: List[Tuple[str, Any]] = list(details.metadata or ())
        timeout = details.timeout
        if timeout is None and unary:
            timeout = self._default_timeout
        if token and not any(key.lower() == "authorization" for key, _ in metadata):
            metadata.append(("authorization", f"Bearer {token}"))
        return _ClientCallDetails(
            details.method,
            timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details, unary=True), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


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
    ``tls=False``, raise :class:`ValueError`. ``options`` are grpc channel options
    (e.g. ``("grpc.ssl_target_name_override", name)``). ``target`` keeps the grpc
    target (``host:port``, without scheme) and ``tls`` whether the channel uses TLS.

    The access token set with :meth:`set_access_token` (or by :meth:`sign_in`) is
    sent with every call. ``default_timeout`` (seconds) applies to unary calls made
    without a timeout.

    ``api_key``, a service account's API key, makes the client act as that account:
    before its first call it trades the key for an access token
    (``AuthService.ExchangeApiKey``), and trades it again before a call made less
    than ``token_refresh_margin`` seconds (default 60, at most half the token's
    lifetime) before that token expires. Such tokens have no refresh token. When an
    exchange is refused (a deleted or expired key: ``UNAUTHENTICATED``), a token that
    has not expired yet is still used (the next call tries again); otherwise the call
    that needed it fails with that error. The key is never logged, nor shown by ``repr``.
    See also :meth:`from_env` and :meth:`sign_in_with_api_key`.
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
    ):
        if api_key is not None and access_token is not None:
            raise ValueError("pass either access_token or api_key, not both")
        if token_refresh_margin < 0:
            raise ValueError("token_refresh_margin must not be negative")
        self._api_key = _ApiKey(api_key) if api_key is not None else None
        self.target, credentials = _channel_target(target, tls, root_certificates, credentials)
        self.tls = credentials is not None
        self._lock = threading.Lock()
        # Held while trading the API key, so that concurrent calls make one exchange.
        self._exchange_lock = threading.Lock()
        self._access_token = access_token
        # With an API key: when the access token expires (Unix seconds; None: unknown) and
        # how long it lived when received.
        self._token_expiry: Optional[float] = None
        self._token_lifetime: Optional[float] = None
        self._token_refresh_margin = float(token_refresh_margin)
        self._default_timeout = default_timeout
        if credentials is None:
            raw = grpc.insecure_channel(self.target, options=options)
        else:
            raw = grpc.secure_channel(self.target, credentials, options=options)
        self._raw_channel = raw
        # ExchangeApiKey goes over the raw channel: public, and not through the interceptor
        # that calls it.
        self._exchange_stub = auth_pb2_grpc.AuthServiceStub(raw)
        self.channel = grpc.intercept_channel(raw, _BearerInterceptor(self._token, default_timeout))
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
        env = os.environ if environ is None else environ
        api_key = (env.get(API_KEY_VAR) or "").strip()
        if not api_key:
            raise ValueError(f"{API_KEY_VAR} is not set: it must hold a service account's API key")
        if "api_key" in kwargs or "access_token" in kwargs:
            raise TypeError(f"from_env takes the API key from {API_KEY_VAR}, not from arguments")
        if target is None:
            target = (env.get(SERVER_VAR) or "").strip() or DEFAULT_TARGET
        ca_file = (env.get(CA_FILE_VAR) or "").strip()
        if ca_file and kwargs.get("root_certificates") is None and kwargs.get("credentials") is None:
            if kwargs.get("tls") is not False and not target.lower().startswith("http://"):
                with open(ca_file, "rb") as pem:
                    kwargs["root_certificates"] = pem.read()
        return cls(target, api_key=api_key, **kwargs)

    # -- tokens -----------------------------------------------------------------

    def _token(self) -> Optional[str]:
        """The token for the next call; with an API key, exchanged first when due."""
        with self._lock:
            key, token = self._api_key, self._access_token
            due = key is not None and (not token or self._token_due())
        if not due:
            return token
        with self._exchange_lock:
            with self._lock:
                # Another thread may have exchanged (or the key changed) meanwhile.
                key, token = self._api_key, self._access_token
                due = key is not None and (not token or self._token_due())
            if due:
                try:
                    token = self._exchange(key).tokens.access_token
                except Exception:
                    # Not expired yet (only due): use it, the next call tries again.
                    with self._lock:
                        expiry = self._token_expiry
                    if not (token and expiry is not None and time.time() < expiry):
                        raise
        return token

    def _token_due(self) -> bool:
        """Whether the API key's token expires within the refresh margin. Holds ``_lock``."""
        if self._token_expiry is None:
            return False
        margin = self._token_refresh_margin
        if self._token_lifetime is not None:
            margin = min(margin, self._token_lifetime / 2)
        return time.time() >= self._token_expiry - margin

    def _exchange(self, key: _ApiKey) -> auth_pb2.ExchangeApiKeyResponse:
        """Trades ``key`` for an access token and uses that from then on."""
        response = self._exchange_stub.ExchangeApiKey(
            auth_pb2.ExchangeApiKeyRequest(api_key=key.reveal()), timeout=self._default_timeout
        )
        tokens = response.tokens
        if not tokens.access_token:
            raise RuntimeError("ExchangeApiKey answered no access token")
        now = time.time()
        expiry = None
        if tokens.HasField("access_token_expire_time"):
            expiry = tokens.access_token_expire_time.ToNanoseconds() / 1e9
        with self._lock:
            if self._api_key is key:  # not replaced meanwhile
                self._access_token = tokens.access_token
                self._token_expiry = expiry
                self._token_lifetime = None if expiry is None else max(expiry - now, 0.0)
        return response

    @property
    def access_token(self) -> Optional[str]:
        """The access token sent with every call, or None (with an API key: the last one
        exchanged, without exchanging)."""
        with self._lock:
            return self._access_token

    @property
    def access_token_expire_time(self) -> Optional[datetime.datetime]:
        """With an API key, when its current access token expires (UTC); else None."""
        with self._lock:
            expiry = self._token_expiry
        if expiry is None:
            return None
        return datetime.datetime.fromtimestamp(expiry, tz=datetime.timezone.utc)

    @property
    def uses_api_key(self) -> bool:
        """Whether this client acts as a service account through an API key."""
        with self._lock:
            return self._api_key is not None

    def set_access_token(self, token: Optional[str]) -> None:
        """Sets (or, with None, clears) the access token sent with every call.

        The client then stops using an API key it had.
        """
        with self._lock:
            self._api_key = None
            self._access_token = token
            self._token_expiry = self._token_lifetime = None

    def sign_in_with_api_key(self, api_key: str) -> auth_pb2.ExchangeApiKeyResponse:
        """Acts as the service account of ``api_key`` from now on.

        Trades the key for an access token at once (a refused key raises the
        :class:`grpc.RpcError`, ``UNAUTHENTICATED``, and changes nothing), then again
        whenever a call comes shortly before that token expires, as with ``api_key=``.
        Returns the ``ExchangeApiKeyResponse``.
        """
        key = _ApiKey(api_key)
        with self._exchange_lock:
            previous = self._swap_key(key)
            try:
                return self._exchange(key)
            except BaseException:
                self._swap_key(previous[0], previous[1:])
                raise

    def _swap_key(self, key: Optional[_ApiKey], state: Optional[tuple] = None) -> tuple:
        with self._lock:
            old = (self._api_key, self._access_token, self._token_expiry, self._token_lifetime)
            self._api_key = key
            if state is None:
                self._access_token = self._token_expiry = self._token_lifetime = None
            else:
                self._access_token, self._token_expiry, self._token_lifetime = state
            return old

    def sign_in(
        self, email: str, password: str, organization: str = ""
    ) -> auth_pb2.SignInResponse:
        """Signs in with email and password.

        When the answer carries tokens, their access token is used from then on (and an
        API key no longer). When it is an MFA challenge, complete it with
        ``auth.VerifyMfa`` and call :meth:`set_access_token` with the result.
        """
        response = self.auth.SignIn(
            auth_pb2.SignInRequest(email=email, password=password, organization=organization)
        )
        if response.WhichOneof("result") == "tokens":
            self.set_access_token(response.tokens.access_token)
        return response

    # -- lifecycle --------------------------------------------------------------

    def close(self) -> None:
        self._raw_channel.close()

    def __repr__(self) -> str:
        how = "api key" if self.uses_api_key else "token" if self.access_token else "anonymous"
        return f"<Steward {self.target} tls={self.tls} {how}>"

    def __enter__(self) -> "Steward":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _channel_target(
    target: str,
    tls: Optional[bool],
    root_certificates: Optional[bytes],
    credentials: Optional[grpc.ChannelCredentials],
) -> Tuple[str, Optional[grpc.ChannelCredentials]]:
    """The grpc target and channel credentials (None: plaintext) of a :class:`Steward`."""
    if root_certificates is not None and not isinstance(root_certificates, bytes):
        raise TypeError("root_certificates must be PEM bytes, e.g. open('ca.pem', 'rb').read()")
    if credentials is not None and root_certificates is not None:
        raise ValueError("pass either credentials or root_certificates, not both")
    wants_tls = credentials is not None or root_certificates is not None
    if tls is False and wants_tls:
        raise ValueError("tls=False contradicts credentials / root_certificates")

    given = target
    scheme, sep, _ = target.partition("://")
    scheme = scheme.lower() if sep else ""
    if scheme in ("http", "https"):
        url = urlsplit(target)
        try:
            port = url.port
        except ValueError:
            port = None
            url = None
        malformed = url is None or not url.hostname or url.username is not None
        if malformed or url.path not in ("", "/") or url.query or url.fragment:
            raise ValueError(f"expected {scheme}://host[:port], got {target!r}")
        if port is None:
            port = 443 if scheme == "https" else 80
            target = f"{url.netloc}:{port}"
        else:
            target = url.netloc
        if scheme == "http" and (tls or wants_tls):
            raise ValueError(f"{given!r} is plaintext (http://); use https:// for TLS")
        if scheme == "https":
            if tls is False:
                raise ValueError(f"tls=False contradicts {given!r}")
            tls = True

    if credentials is not None:
        return target, credentials
    if tls or root_certificates is not None:
        return target, grpc.ssl_channel_credentials(root_certificates=root_certificates)
    return target, None


def error_details(error: grpc.RpcError) -> list:
    """Decodes the ``google.rpc.Status`` details attached to a failed call.

    Returns the unpacked detail messages (``error_details_pb2.PreconditionFailure``,
    ``BadRequest``, ``ErrorInfo``, ``RetryInfo``, ...), or an empty list when the
    error carries none. Details of a type this client does not know are returned
    as ``google.protobuf.Any``.
    """
    from google.protobuf import descriptor_pool, message_factory
    from google.rpc import error_details_pb2  # noqa: F401  (registers the types)
    from grpc_status import rpc_status

    status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    if status is None:
        return []
    pool = descriptor_pool.Default()
    decoded = []
    for detail in status.details:
        try:
            descriptor = pool.FindMessageTypeByName(detail.TypeName())
        except KeyError:
            decoded.append(detail)
            continue
        message = message_factory.GetMessageClass(descriptor)()
        detail.Unpack(message)
        decoded.append(message)
    return decoded
