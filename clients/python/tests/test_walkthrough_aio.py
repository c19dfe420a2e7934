"""The seed's first steps through the asyncio client (grpc.aio), plaintext and TLS."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from google.rpc import error_details_pb2

from steward_client import admin_pb2, administrator_pb2, auth_pb2, error_details

from conftest import OWNER_EMAIL, OWNER_PASSWORD


def test_administrators_walkthrough_asyncio(server, owner):
    async def walkthrough():
        async with server.aclient() as client:
            signed_in = await client.sign_in(OWNER_EMAIL, OWNER_PASSWORD)
            assert signed_in.tokens.refresh_token and client.has_refresh_token
            assert "refresh" not in repr(client) or signed_in.tokens.refresh_token not in repr(client)
            profile = (await client.admin.GetProfile(admin_pb2.GetProfileRequest())).profile
            org = profile.organization.name
            assert org == owner.organization

            runner = (await client.admin.CreateAdministrator(admin_pb2.CreateAdministratorRequest(
                parent=org,
                administrator=administrator_pb2.Administrator(
                    email="async-runner@example.com", role=administrator_pb2.ROLE_COMMAND_RUNNER
                ),
                request_id=str(uuid.uuid4()),
            ))).administrator
            token = server.invite_token("async-runner@example.com")
            async with server.aclient() as runner_client:
                password = "async runners await their turn 5!"
                await runner_client.auth.AcceptInvite(auth_pb2.AcceptInviteRequest(token=token, password=password))
                await runner_client.sign_in("async-runner@example.com", password)
                with pytest.raises(grpc.RpcError) as caught:
                    await runner_client.admin.ListAdministrators(admin_pb2.ListAdministratorsRequest(parent=org))
                err = caught.value
                assert err.code() == grpc.StatusCode.PERMISSION_DENIED
                reasons = [d.reason for d in error_details(err) if isinstance(d, error_details_pb2.ErrorInfo)]
                assert reasons == ["ROLE_REQUIRED"], error_details(err)

            listed = [a.name async for a in client.administrators.list(parent=org)]
            assert runner.name in listed and owner.name in listed
            await client.admin.BatchDeleteAdministrators(
                admin_pb2.BatchDeleteAdministratorsRequest(parent=org, names=[runner.name])
            )
            listed = [a.name async for a in client.administrators.list(parent=org)]
            assert runner.name not in listed

    asyncio.run(walkthrough())
