"""The SDK under test is the installed wheel: its generated code, typed stubs and marker."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import steward_client
from steward_client import IDEMPOTENT_METHODS, service_config

SOURCE = Path(__file__).resolve().parents[1] / "steward_client"


def test_the_installed_wheel_is_tested():
    package = Path(steward_client.__file__).resolve().parent
    assert package != SOURCE, f"steward_client imported from the source tree ({package})"
    assert "site-packages" in package.parts, package
    files = {str(f) for f in importlib.metadata.files("steward-client")}
    for needed in (
        "steward_client/py.typed",
        "steward_client/aio.py",
        "steward_client/gen/steward/admin/v1/admin_pb2.py",
        "steward_client/gen/steward/admin/v1/admin_pb2.pyi",
        "steward_client/gen/steward/admin/v1/admin_pb2_grpc.py",
        "steward_client/gen/steward/admin/v1/admin_pb2_grpc.pyi",
    ):
        assert needed in files, f"{needed} not in the wheel"
    assert not any("internal" in f for f in files), "internal services are not part of the SDK"
    requires = [r.split(";")[0] for r in importlib.metadata.requires("steward-client")]
    assert any(r.startswith("grpcio") and ">=" in r and "<2" in r for r in requires), requires
    assert not any("==" in r for r in requires), f"pinned dependencies: {requires}"


def test_only_calls_without_side_effects_are_retried():
    methods = {method for _, method in IDEMPOTENT_METHODS}
    assert {"GetAdministrator", "ListAdministrators", "CheckAccess", "WatchRun"} <= methods
    assert not methods & {"CreateAdministrator", "RunCommand", "SignIn", "RefreshSession"}
    assert '"UNAVAILABLE"' in service_config()
