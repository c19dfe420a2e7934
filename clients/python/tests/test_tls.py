"""TLS: the SDK's connection settings, and a server whose CA the client does not trust."""

from __future__ import annotations

import time

import grpc
import pytest

from steward_client import Steward, admin_pb2


def test_target_and_tls_settings():
    def opened(target, **kwargs):
        with Steward(target, **kwargs) as steward:
            return steward.target, steward.tls

    assert opened("127.0.0.1:50051") == ("127.0.0.1:50051", False)
    assert opened("http://127.0.0.1:50051") == ("127.0.0.1:50051", False)
    assert opened("https://127.0.0.1:50051") == ("127.0.0.1:50051", True)
    assert opened("https://[::1]:50051/") == ("[::1]:50051", True)
    assert opened("https://steward.example.com") == ("steward.example.com:443", True)
    assert opened("127.0.0.1:50051", tls=True) == ("127.0.0.1:50051", True)
    assert opened("127.0.0.1:50051", root_certificates=b"PEM") == ("127.0.0.1:50051", True)
    for target, kwargs in [
        ("http://127.0.0.1:50051", {"tls": True}),
        ("http://127.0.0.1:50051", {"root_certificates": b"PEM"}),
        ("https://127.0.0.1:50051", {"tls": False}),
        ("127.0.0.1:50051", {"tls": False, "root_certificates": b"PEM"}),
        ("https://127.0.0.1:50051/steward", {}),
    ]:
        with pytest.raises(ValueError):
            Steward(target, **kwargs)


@pytest.mark.parametrize("server", ["tls"], indirect=True)
def test_untrusted_server_certificate_is_refused(server):
    # gRPC's default roots, which do not include the dev CA.
    with Steward(f"https://{server.target}") as untrusted:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            untrusted.admin.GetProfile(admin_pb2.GetProfileRequest(), timeout=10)
        elapsed = time.monotonic() - started
    err = caught.value
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
    assert "certificate" in err.details().lower(), err.details()
    assert elapsed < 5, f"took {elapsed:.1f}s to fail"
