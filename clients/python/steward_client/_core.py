"""What the sync (:class:`steward_client.Steward`) and asyncio (:class:`steward_client.aio.AsyncSteward`)
clients share: target and TLS settings, the session's tokens and when to renew them, the retry
service config, which calls are public, pagination and error details. No I/O here."""

from __future__ import annotations

import json
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import grpc
from google.protobuf.message import Message

from .gen.steward.admin.v1 import (
    admin_pb2,
    organization_pb2,
    role_pb2,
    service_account_pb2,
)
from .gen.steward.audit.v1 import audit_pb2
from .gen.steward.auth.v1 import auth_pb2
from .gen.steward.billing.v1 import billing_pb2
from .gen.steward.commands.v1 import agent_pb2, commands_pb2, systems_pb2

#: The environment variable :meth:`Steward.from_env` reads the API key from.
API_KEY_VAR = "STEWARD_API_KEY"
#: The environment variable :meth:`Steward.from_env` reads the server from (as the CLI does).
SERVER_VAR = "STEWARD_SERVER"
#: The environment variable :meth:`Steward.from_env` reads the CA file to trust from.
CA_FILE_VAR = "STEWARD_CA_FILE"
#: The server :meth:`Steward.from_env` uses when neither ``target`` nor ``STEWARD_SERVER`` is given.
DEFAULT_TARGET = "127.0.0.1:50051"

_SERVICE_MODULES = (
    admin_pb2,
    organization_pb2,
    role_pb2,
    service_account_pb2,
    audit_pb2,
    auth_pb2,
    billing_pb2,
    agent_pb2,
    commands_pb2,
    systems_pb2,
)

#: Calls that need no access token: a session or an API key is never renewed for them, nor are
#: they retried on ``UNAUTHENTICATED`` (a wrong password is not a stale token).
PUBLIC_METHODS = frozenset(
    f"/steward.auth.v1.AuthService/{name}"
    for name in (
        "SignIn",
        "VerifyMfa",
        "AcceptInvite",
        "RefreshSession",
        "ExchangeApiKey",
        "RequestPasswordReset",
        "ResetPassword",
        "GetJwks",
    )
) | {"/steward.commands.v1.AgentService/RegisterAgent"}


def _idempotent(method: str) -> bool:
    return method.startswith(("Get", "List")) or method in (
        "CheckAccess",
        "BatchCheckAccess",
        "WatchRun",
    )


#: The calls without side effects (``Get*``, ``List*``, ``CheckAccess``, ``BatchCheckAccess``,
#: ``WatchRun``): the ones retried on ``UNAVAILABLE``, as ``(service, method)``.
IDEMPOTENT_METHODS: Tuple[Tuple[str, str], ...] = tuple(
    (service.full_name, method.name)
    for module in _SERVICE_MODULES
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
    if _idempotent(method.name) and not method.client_streaming
)

#: How idempotent calls are retried on ``UNAVAILABLE`` (a gRPC ``retryPolicy``): up to 5 attempts,
#: waiting 0.2 s, 0.4 s, 0.8 s, 1.6 s between them (gRPC adds some jitter).
DEFAULT_RETRY_POLICY: Mapping[str, Any] = {
    "maxAttempts": 5,
    "initialBackoff": "0.2s",
    "maxBackoff": "5s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def service_config(retry_policy: Optional[Mapping[str, Any]] = DEFAULT_RETRY_POLICY) -> str:
    """The gRPC service config (JSON) that retries :data:`IDEMPOTENT_METHODS` with ``retry_policy``."""
    if retry_policy is None:
        return json.dumps({})
    names = [{"service": service, "method": method} for service, method in IDEMPOTENT_METHODS]
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": dict(retry_policy)}]})


def channel_options(
    options: Optional[Sequence[Tuple[str, Any]]], retry_policy: Optional[Mapping[str, Any]]
) -> List[Tuple[str, Any]]:
    """The caller's channel options, plus the retry service config unless they set their own."""
    result = list(options or ())
    keys = {key for key, _ in result}
    if "grpc.service_config" not in keys and retry_policy is not None:
        result.append(("grpc.service_config", service_config(retry_policy)))
        if "grpc.enable_retries" not in keys:
            result.append(("grpc.enable_retries", 1))
    return result


class ApiKey:
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


class Secret:
    """A refresh token; its ``repr`` never shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<refresh token redacted>"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a refresh token is not picklable")


class Session:
    """The credentials a client sends, and when to renew them. Its owner serializes access.

    Renewable when it holds an API key (renewed with ``ExchangeApiKey``) or a refresh token
    (renewed with ``RefreshSession``, which rotates it). Renewal is *due* once the access token
    expires within ``margin`` seconds (at most half the token's lifetime).
    """

    def __init__(self, access_token: Optional[str], api_key: Optional[str], margin: float):
        if api_key is not None and access_token is not None:
            raise ValueError("pass either access_token or api_key, not both")
        if margin < 0:
            raise ValueError("token_refresh_margin must not be negative")
        self.api_key: Optional[ApiKey] = ApiKey(api_key) if api_key is not None else None
        self.access_token = access_token
        self.refresh_token: Optional[Secret] = None
        self.expiry: Optional[float] = None  # Unix seconds; None: unknown
        self.lifetime: Optional[float] = None
        self.margin = float(margin)

    @property
    def renewable(self) -> bool:
        return self.api_key is not None or self.refresh_token is not None

    def due(self) -> bool:
        """Whether the next call should renew first."""
        if not self.renewable:
            return False
        if not self.access_token:
            return True
        if self.expiry is None:
            return False
        margin = self.margin
        if self.lifetime is not None:
            margin = min(margin, self.lifetime / 2)
        return time.time() >= self.expiry - margin

    def unexpired(self) -> bool:
        return bool(self.access_token) and self.expiry is not None and time.time() < self.expiry

    def renewal(self) -> Tuple[str, Message, Any]:
        """The call that renews: ``(method, request, credential)``; the credential tells
        :meth:`accept` whether the session still holds it when the answer comes."""
        if self.api_key is not None:
            return "ExchangeApiKey", auth_pb2.ExchangeApiKeyRequest(api_key=self.api_key.reveal()), self.api_key
        if self.refresh_token is not None:
            request = auth_pb2.RefreshSessionRequest(refresh_token=self.refresh_token.reveal())
            return "RefreshSession", request, self.refresh_token
        raise RuntimeError("nothing to renew the access token with")

    def accept(self, tokens: "auth_pb2.TokenSet", credential: Any = None) -> bool:
        """Uses a TokenSet (keeping its refresh token, if any). With ``credential``, only if the
        session still holds it (it was not replaced meanwhile). Returns whether it was used."""
        if credential is not None and credential is not self.api_key and credential is not self.refresh_token:
            return False
        if not tokens.access_token:
            raise RuntimeError("the server answered no access token")
        now = time.time()
        self.access_token = tokens.access_token
        self.expiry = (
            tokens.access_token_expire_time.ToNanoseconds() / 1e9
            if tokens.HasField("access_token_expire_time")
            else None
        )
        self.lifetime = None if self.expiry is None else max(self.expiry - now, 0.0)
        if self.api_key is None:
            self.refresh_token = Secret(tokens.refresh_token) if tokens.refresh_token else None
        return True

    def set_token(self, token: Optional[str]) -> None:
        self.api_key = None
        self.refresh_token = None
        self.access_token = token
        self.expiry = self.lifetime = None

    def snapshot(self) -> tuple:
        return (self.api_key, self.access_token, self.refresh_token, self.expiry, self.lifetime)

    def restore(self, state: tuple) -> None:
        self.api_key, self.access_token, self.refresh_token, self.expiry, self.lifetime = state

    def describe(self) -> str:
        if self.api_key is not None:
            return "api key"
        if self.refresh_token is not None:
            return "session"
        return "token" if self.access_token else "anonymous"


def with_authorization(
    metadata: Optional[Iterable[Tuple[str, Any]]], token: Optional[str]
) -> Tuple[List[Tuple[str, Any]], bool]:
    """The call's metadata with ``authorization: Bearer <token>`` added, and whether the token
    was added (a call with its own ``authorization`` keeps it)."""
    entries = list(metadata or ())
    if any(key.lower() == "authorization" for key, _ in entries):
        return entries, False
    if token:
        entries.append(("authorization", f"Bearer {token}"))
        return entries, True
    return entries, False


def has_own_authorization(metadata: Optional[Iterable[Tuple[str, Any]]]) -> bool:
    return any(key.lower() == "authorization" for key, _ in (metadata or ()))


def method_name(method: Any) -> str:
    return method.decode() if isinstance(method, bytes) else method


def channel_target(
    target: str,
    tls: Optional[bool],
    root_certificates: Optional[bytes],
    credentials: Optional[grpc.ChannelCredentials],
) -> Tuple[str, Optional[grpc.ChannelCredentials]]:
    """The grpc target and channel credentials (None: plaintext) of a client."""
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


def from_env_arguments(
    target: Optional[str], environ: Mapping[str, str], kwargs: Dict[str, Any]
) -> Tuple[str, Dict[str, Any]]:
    """``from_env``'s target and constructor arguments (see :meth:`Steward.from_env`)."""
    api_key = (environ.get(API_KEY_VAR) or "").strip()
    if not api_key:
        raise ValueError(f"{API_KEY_VAR} is not set: it must hold a service account's API key")
    if "api_key" in kwargs or "access_token" in kwargs:
        raise TypeError(f"from_env takes the API key from {API_KEY_VAR}, not from arguments")
    if target is None:
        target = (environ.get(SERVER_VAR) or "").strip() or DEFAULT_TARGET
    ca_file = (environ.get(CA_FILE_VAR) or "").strip()
    if ca_file and kwargs.get("root_certificates") is None and kwargs.get("credentials") is None:
        if kwargs.get("tls") is not False and not target.lower().startswith("http://"):
            with open(ca_file, "rb") as pem:
                kwargs["root_certificates"] = pem.read()
    return target, dict(kwargs, api_key=api_key)


def items_field(response_type: Any) -> str:
    """The repeated message field a list response carries its page in (``administrators``...)."""
    for field in response_type.DESCRIPTOR.fields:
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == 3
        if repeated and field.message_type is not None:
            return field.name
    raise TypeError(f"{response_type.DESCRIPTOR.full_name} has no repeated message field to page through")


def list_administrators_request(
    parent: str, page_size: int, filter: str, order_by: str
) -> admin_pb2.ListAdministratorsRequest:
    return admin_pb2.ListAdministratorsRequest(
        parent=parent, page_size=page_size, filter=filter, order_by=order_by
    )


def error_details(error: grpc.RpcError) -> list:
    """Decodes the ``google.rpc.Status`` details attached to a failed call (sync or asyncio).

    Returns the unpacked detail messages (``error_details_pb2.PreconditionFailure``,
    ``BadRequest``, ``ErrorInfo``, ``RetryInfo``, ...), or an empty list when the
    error carries none. Details of a type this client does not know are returned
    as ``google.protobuf.Any``.
    """
    from google.protobuf import descriptor_pool, message_factory
    from google.rpc import error_details_pb2  # noqa: F401  (registers the types)
    from google.rpc import status_pb2

    trailing = getattr(error, "trailing_metadata", None)
    raw = None
    for key, value in (trailing() or ()) if callable(trailing) else ():
        if key == "grpc-status-details-bin":
            raw = value
    if raw is None:
        return []
    status = status_pb2.Status.FromString(raw)
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
