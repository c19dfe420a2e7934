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

Errors are :class:`grpc.RpcError`; :func:`error_details` decodes the
``google.rpc`` details (``PreconditionFailure``, ``BadRequest``, ``ErrorInfo``,
``RetryInfo``...) that Steward attaches to them.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, List, Optional, Sequence, Tuple
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
    "admin_pb2",
    "administrator_pb2",
    "organization_pb2",
    "role_pb2",
    "audit_pb2",
    "auth_pb2",
    "billing_pb2",
    "agent_pb2",
    "commands_pb2",
    "systems_pb2",
]

_Metadata = Sequence[Tuple[str, Any]]


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
    ):
        self.target, credentials = _channel_target(target, tls, root_certificates, credentials)
        self.tls = credentials is not None
        self._lock = threading.Lock()
        self._access_token = access_token
        if credentials is None:
            raw = grpc.insecure_channel(self.target, options=options)
        else:
            raw = grpc.secure_channel(self.target, credentials, options=options)
        self._raw_channel = raw
        self.channel = grpc.intercept_channel(raw, _BearerInterceptor(self._token, default_timeout))
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.organizations = organization_pb2_grpc.OrganizationServiceStub(self.channel)
        self.roles = role_pb2_grpc.RoleServiceStub(self.channel)
        self.billing = billing_pb2_grpc.BillingServiceStub(self.channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(self.channel)
        self.commands = commands_pb2_grpc.CommandServiceStub(self.channel)
        self.systems = systems_pb2_grpc.SystemServiceStub(self.channel)
        self.agents = agent_pb2_grpc.AgentServiceStub(self.channel)

    # -- tokens -----------------------------------------------------------------

    def _token(self) -> Optional[str]:
        with self._lock:
            return self._access_token

    @property
    def access_token(self) -> Optional[str]:
        """The access token sent with every call, or None."""
        return self._token()

    def set_access_token(self, token: Optional[str]) -> None:
        """Sets (or, with None, clears) the access token sent with every call."""
        with self._lock:
            self._access_token = token

    def sign_in(
        self, email: str, password: str, organization: str = ""
    ) -> auth_pb2.SignInResponse:
        """Signs in with email and password.

        When the answer carries tokens, their access token is used from then on.
        When it is an MFA challenge, complete it with ``auth.VerifyMfa`` and call
        :meth:`set_access_token` with the result.
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
