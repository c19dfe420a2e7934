"""The seed's walk-throughs (administrators, commands, an auditor, a CI job with an API key)
through the generated Python SDK, against the real server."""

from __future__ import annotations

import datetime
import time
import uuid

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2
from google.rpc import error_details_pb2

from steward_client import (
    API_KEY_VAR,
    CA_FILE_VAR,
    SERVER_VAR,
    Steward,
    admin_pb2,
    administrator_pb2,
    agent_pb2,
    audit_pb2,
    auth_pb2,
    billing_pb2,
    commands_pb2,
    error_details,
    role_pb2,
    service_account_pb2,
    systems_pb2,
)

Role = administrator_pb2.Role
State = administrator_pb2.Administrator.State


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    """Runs a call that must fail, and returns its error."""
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return caught.value


def detail(error: grpc.RpcError, kind):
    found = [d for d in error_details(error) if isinstance(d, kind)]
    assert found, f"no {kind.DESCRIPTOR.full_name} in the details of {error.code()}: {error.details()}"
    return found[0]


def invite_and_sign_in(
    server, owner, address: str, password: str, role_name: str = "roles/command-runner"
):
    """Owner creates an administrator (a Command Runner unless told otherwise); it accepts its
    emailed invite and signs in."""
    created = owner.client.admin.CreateAdministrator(
        admin_pb2.CreateAdministratorRequest(
            parent=owner.organization,
            administrator=administrator_pb2.Administrator(email=address, role_name=role_name),
            request_id=str(uuid.uuid4()),
        )
    ).administrator
    token = server.invite_token(address)
    client = server.client()
    client.auth.AcceptInvite(auth_pb2.AcceptInviteRequest(token=token, password=password))
    client.sign_in(address, password)
    return created, client


def test_unauthenticated_calls_are_refused(server):
    with server.client() as anonymous:
        err = rpc_error(anonymous.admin.GetProfile, admin_pb2.GetProfileRequest())
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        anonymous.set_access_token("not-a-jwt")
        err = rpc_error(anonymous.admin.GetProfile, admin_pb2.GetProfileRequest())
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_administrators_walkthrough(server, owner):
    admin = owner.client.admin

    # Who am I, and which organization?
    profile = admin.GetProfile(admin_pb2.GetProfileRequest()).profile
    assert profile.administrator.email == "owner@example.com"
    assert profile.administrator.role == administrator_pb2.ROLE_ADMINISTRATOR
    assert profile.administrator.billing
    assert profile.administrator.state == State.STATE_ACTIVE
    assert profile.organization.name.startswith("organizations/")
    assert profile.organization.display_name

    # Create a Command Runner; a retry with the same request_id creates nothing new.
    request = admin_pb2.CreateAdministratorRequest(
        parent=owner.organization,
        administrator=administrator_pb2.Administrator(
            email="helpdesk@example.com", role=administrator_pb2.ROLE_COMMAND_RUNNER
        ),
        request_id=str(uuid.uuid4()),
    )
    runner = admin.CreateAdministrator(request).administrator
    assert runner.name.startswith(owner.organization + "/administrators/")
    assert runner.state == State.STATE_INVITED
    assert runner.role == administrator_pb2.ROLE_COMMAND_RUNNER
    assert runner.invited_by == owner.name
    assert admin.CreateAdministrator(request).administrator.name == runner.name

    # The invite email carries the set-password link; a weak password is refused by field.
    token = server.invite_token("helpdesk@example.com")
    with server.client() as helpdesk:
        err = rpc_error(
            helpdesk.auth.AcceptInvite, auth_pb2.AcceptInviteRequest(token=token, password="short")
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        bad = detail(err, error_details_pb2.BadRequest)
        assert [v.field for v in bad.field_violations] == ["password"]

        accepted = helpdesk.auth.AcceptInvite(
            auth_pb2.AcceptInviteRequest(token=token, password="helpdesk runs the weekly reports 7!")
        )
        assert accepted.administrator == runner.name
        helpdesk.sign_in("helpdesk@example.com", "helpdesk runs the weekly reports 7!")
        own = helpdesk.admin.GetProfile(admin_pb2.GetProfileRequest()).profile
        assert own.administrator.name == runner.name
        assert own.administrator.role == administrator_pb2.ROLE_COMMAND_RUNNER

        # A Command Runner may not manage administrators.
        err = rpc_error(
            helpdesk.admin.ListAdministrators,
            admin_pb2.ListAdministratorsRequest(parent=owner.organization),
        )
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert detail(err, error_details_pb2.ErrorInfo).reason == "ROLE_REQUIRED"
        assert "administrators.read" in err.details()
        # Its role says what it holds; the refusal above names the permission it lacks.
        role = helpdesk.roles.GetRole(role_pb2.GetRoleRequest(name="roles/command-runner")).role
        assert "commands.run" in role.permissions
        assert "administrators.read" not in role.permissions

    listed = admin.ListAdministrators(admin_pb2.ListAdministratorsRequest(parent=owner.organization))
    assert [a.email for a in listed.administrators] == ["helpdesk@example.com", "owner@example.com"]
    assert listed.total_size == 2
    assert all(a.state == State.STATE_ACTIVE for a in listed.administrators)

    # Edit with a field mask: only mfa_required changes, whats_new (not in the mask) does not.
    current = admin.GetAdministrator(admin_pb2.GetAdministratorRequest(name=runner.name)).administrator
    updated = admin.UpdateAdministrator(
        admin_pb2.UpdateAdministratorRequest(
            administrator=administrator_pb2.Administrator(
                name=runner.name, mfa_required=True, whats_new=True, etag=current.etag
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["mfa_required"]),
        )
    ).administrator
    assert updated.mfa_required
    assert not updated.whats_new
    assert updated.role == administrator_pb2.ROLE_COMMAND_RUNNER
    assert updated.etag and updated.etag != current.etag
    # The old etag no longer matches: the update is refused and changes nothing.
    err = rpc_error(
        admin.UpdateAdministrator,
        admin_pb2.UpdateAdministratorRequest(
            administrator=administrator_pb2.Administrator(
                name=runner.name, billing=True, etag=current.etag
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["billing"]),
        ),
    )
    assert err.code() == grpc.StatusCode.ABORTED

    # The confirmation window: validate_only answers what would be deleted, deletes nothing.
    preview = admin.BatchDeleteAdministrators(
        admin_pb2.BatchDeleteAdministratorsRequest(
            parent=owner.organization, names=[runner.name], validate_only=True
        )
    )
    assert [a.name for a in preview.administrators] == [runner.name]
    admin.GetAdministrator(admin_pb2.GetAdministratorRequest(name=runner.name))

    # An administrator can never delete itself (and here it is the last one anyway).
    for validate_only in (True, False):
        err = rpc_error(
            admin.BatchDeleteAdministrators,
            admin_pb2.BatchDeleteAdministratorsRequest(
                parent=owner.organization, names=[owner.name], validate_only=validate_only
            ),
        )
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        failure = detail(err, error_details_pb2.PreconditionFailure)
        violations = {(v.type, v.subject) for v in failure.violations}
        assert ("SELF_DELETE", owner.name) in violations, violations

    # Delete the Command Runner: it is gone and can no longer sign in.
    deleted = admin.BatchDeleteAdministrators(
        admin_pb2.BatchDeleteAdministratorsRequest(parent=owner.organization, names=[runner.name])
    )
    assert [a.name for a in deleted.administrators] == [runner.name]
    err = rpc_error(admin.GetAdministrator, admin_pb2.GetAdministratorRequest(name=runner.name))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    listed = admin.ListAdministrators(admin_pb2.ListAdministratorsRequest(parent=owner.organization))
    assert [a.name for a in listed.administrators] == [owner.name]
    with server.client() as gone:
        err = rpc_error(gone.sign_in, "helpdesk@example.com", "helpdesk runs the weekly reports 7!")
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_commands_walkthrough(server, owner):
    org = owner.organization

    # A system to run on: a connect key, and an agent registering with it (no token).
    key = owner.client.systems.CreateConnectKey(
        systems_pb2.CreateConnectKeyRequest(
            parent=org, connect_key=systems_pb2.ConnectKey(display_name="sdk test")
        )
    ).connect_key
    assert key.key
    with server.client() as agent:
        system = agent.agents.RegisterAgent(
            agent_pb2.RegisterAgentRequest(
                connect_key=key.key, hostname="web-1", os="linux", agent_version="0.0.0-sdk-test"
            )
        ).system
    assert system.name.startswith(org + "/systems/")

    def create_command(display_name: str, script: str) -> commands_pb2.Command:
        return owner.client.commands.CreateCommand(
            commands_pb2.CreateCommandRequest(
                parent=org,
                command=commands_pb2.Command(
                    display_name=display_name,
                    script=script,
                    interpreter=commands_pb2.INTERPRETER_SH,
                    timeout=duration_pb2.Duration(seconds=60),
                    target_systems=[system.name],
                ),
                request_id=str(uuid.uuid4()),
            )
        ).command

    report = create_command("disk usage report", "df -h")
    restart = create_command("restart web server", "systemctl restart nginx")
    assert report.name.startswith(org + "/commands/")

    runner, ops = invite_and_sign_in(server, owner, "ops@example.com", "ops team keeps disks tidy 2024!")
    with ops:
        grant = owner.client.commands.CreateGrant(
            commands_pb2.CreateGrantRequest(
                parent=report.name, grant=commands_pb2.Grant(grantee=runner.name)
            )
        ).grant
        assert grant.name.startswith(report.name + "/grants/")
        assert grant.grantor == owner.name

        # The runner sees exactly the command granted to it.
        seen = ops.commands.ListCommands(commands_pb2.ListCommandsRequest(parent=org))
        assert [c.name for c in seen.commands] == [report.name]
        err = rpc_error(ops.commands.GetCommand, commands_pb2.GetCommandRequest(name=restart.name))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED

        decision = ops.commands.CheckAccess(
            commands_pb2.CheckAccessRequest(command=report.name, action=commands_pb2.ACTION_RUN)
        ).decision
        assert decision.allowed
        assert decision.reason == commands_pb2.DECISION_REASON_GRANT
        assert decision.grantor == owner.name

        # It may run the granted command, and nothing else.
        run = ops.commands.RunCommand(
            commands_pb2.RunCommandRequest(command=report.name, request_id=str(uuid.uuid4()))
        ).run
        assert run.runner == runner.name
        assert run.command == report.name
        assert list(run.systems) == [system.name]
        assert run.state == commands_pb2.RUN_STATE_QUEUED
        err = rpc_error(ops.commands.RunCommand, commands_pb2.RunCommandRequest(command=restart.name))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED

        runs = ops.commands.ListRuns(commands_pb2.ListRunsRequest(parent=org))
        assert [r.name for r in runs.runs] == [run.name]

        # Revoked: never honoured once DeleteGrant has returned.
        owner.client.commands.DeleteGrant(commands_pb2.DeleteGrantRequest(name=grant.name))
        seen = ops.commands.ListCommands(commands_pb2.ListCommandsRequest(parent=org))
        assert list(seen.commands) == []
        err = rpc_error(ops.commands.RunCommand, commands_pb2.RunCommandRequest(command=report.name))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def test_read_only_walkthrough(server, owner):
    org = owner.organization
    script = commands_pb2.Command(
        display_name="last logins", script="last -n 20", interpreter=commands_pb2.INTERPRETER_SH
    )
    command = owner.client.commands.CreateCommand(
        commands_pb2.CreateCommandRequest(parent=org, command=script, request_id=str(uuid.uuid4()))
    ).command

    # The owner invites an auditor by role name; it accepts its emailed invite and signs in.
    auditor, client = invite_and_sign_in(
        server, owner, "auditor@example.com", "auditors read every line twice 9!",
        role_name="roles/read-only",
    )
    assert auditor.role == administrator_pb2.ROLE_READ_ONLY
    assert auditor.role_name == "roles/read-only"
    with client:
        # It reads everything: administrators, commands, roles, and the audit log, which
        # recorded the owner creating it.
        listed = client.admin.ListAdministrators(admin_pb2.ListAdministratorsRequest(parent=org))
        assert {owner.name, auditor.name} <= {a.name for a in listed.administrators}
        seen = client.commands.ListCommands(commands_pb2.ListCommandsRequest(parent=org))
        assert command.name in [c.name for c in seen.commands]
        roles = {r.name: r for r in client.roles.ListRoles(role_pb2.ListRolesRequest()).roles}
        assert "audit.read" in roles["roles/read-only"].permissions
        events = client.audit.ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(parent=org, filter=f'target = "{auditor.name}"')
        ).audit_events
        assert any(
            e.actor == owner.name
            and e.action == "/steward.admin.v1.AdminService/CreateAdministrator"
            and e.result == audit_pb2.AuditEvent.RESULT_ALLOWED
            for e in events
        ), events

        # It changes nothing and runs nothing.
        err = rpc_error(
            client.commands.RunCommand,
            commands_pb2.RunCommandRequest(command=command.name, request_id=str(uuid.uuid4())),
        )
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "commands.run" in err.details()
        err = rpc_error(
            client.commands.CreateCommand,
            commands_pb2.CreateCommandRequest(
                parent=org, command=script, request_id=str(uuid.uuid4())
            ),
        )
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        # Nor may it see the payment card: that takes billing.
        err = rpc_error(
            client.billing.GetPaymentCard,
            billing_pb2.GetPaymentCardRequest(name=f"{org}/paymentCard"),
        )
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert detail(err, error_details_pb2.ErrorInfo).reason == "BILLING_REQUIRED"


def test_api_key_settings():
    # Nothing is sent before the first call: these need no server.
    for environ in ({}, {API_KEY_VAR: ""}, {API_KEY_VAR: "   "}):
        with pytest.raises(ValueError, match=API_KEY_VAR):
            Steward.from_env(environ=environ)
    with pytest.raises(ValueError):
        Steward("127.0.0.1:50051", access_token="a token", api_key="stw_k_secret")
    with pytest.raises(ValueError):
        Steward("127.0.0.1:50051", api_key=" ")
    with Steward.from_env(environ={API_KEY_VAR: "stw_k_very-secret\n"}) as ci:
        assert (ci.target, ci.tls, ci.uses_api_key) == ("127.0.0.1:50051", False, True)
        assert ci.access_token is None and ci.access_token_expire_time is None
        # The key shows nowhere: not in the client's repr, nor in its attributes'.
        assert "very-secret" not in repr(ci) and "very-secret" not in repr(vars(ci))
        ci.set_access_token("a token")  # a token set by hand replaces the key
        assert not ci.uses_api_key
    environ = {API_KEY_VAR: "stw_k_s", SERVER_VAR: "https://steward.example.com"}
    with Steward.from_env(environ=environ) as ci:
        assert (ci.target, ci.tls) == ("steward.example.com:443", True)
    with Steward.from_env("http://127.0.0.1:1", environ=environ) as ci:
        assert (ci.target, ci.tls) == ("127.0.0.1:1", False)


def test_ci_job_walkthrough(server, owner, tmp_path):
    """A CI job: a Manager service account with an API key, until the key is deleted."""
    org = owner.organization
    accounts = owner.client.service_accounts
    account = accounts.CreateServiceAccount(
        service_account_pb2.CreateServiceAccountRequest(
            parent=org,
            service_account=service_account_pb2.ServiceAccount(
                display_name="ci", role_name="roles/manager"
            ),
        )
    ).service_account
    assert account.name.startswith(org + "/serviceAccounts/")
    assert account.role == administrator_pb2.ROLE_MANAGER
    assert account.role_name == "roles/manager"
    assert account.creator == owner.name
    listed = accounts.ListServiceAccounts(service_account_pb2.ListServiceAccountsRequest(parent=org))
    assert account.name in [a.name for a in listed.service_accounts]

    expire_time = timestamp_pb2.Timestamp()
    expire_time.FromDatetime(
        datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=30)
    )
    created = accounts.CreateServiceAccountKey(
        service_account_pb2.CreateServiceAccountKeyRequest(
            parent=account.name, key=service_account_pb2.ServiceAccountKey(expire_time=expire_time)
        )
    )
    key, api_key = created.key, created.api_key
    assert key.name.startswith(account.name + "/keys/")
    assert api_key.startswith("stw_")
    assert not key.HasField("last_used_time")

    # The job's environment, as a CI system would set it.
    environ = {API_KEY_VAR: api_key}
    if server.mode == "tls":
        ca_file = tmp_path / "ca.pem"
        ca_file.write_bytes(server.ca_pem)
        environ |= {SERVER_VAR: f"https://{server.target}", CA_FILE_VAR: str(ca_file)}
    else:
        environ[SERVER_VAR] = server.target
    with Steward.from_env(environ=environ, default_timeout=30) as ci:
        assert ci.tls == (server.mode == "tls")
        assert api_key not in repr(ci)
        assert ci.access_token is None  # exchanged on the first call, not before

        # It works with the Manager's permissions: commands, connect keys.
        ci.commands.ListCommands(commands_pb2.ListCommandsRequest(parent=org))
        token = ci.access_token
        assert token
        expires = ci.access_token_expire_time
        assert expires > datetime.datetime.now(datetime.timezone.utc)
        connect_key = ci.systems.CreateConnectKey(
            systems_pb2.CreateConnectKeyRequest(
                parent=org, connect_key=systems_pb2.ConnectKey(display_name="from ci")
            )
        ).connect_key
        assert connect_key.key
        assert ci.access_token == token  # still fresh: not exchanged again

        # Not administrators, and it has no profile.
        err = rpc_error(
            ci.admin.ListAdministrators, admin_pb2.ListAdministratorsRequest(parent=org)
        )
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert detail(err, error_details_pb2.ErrorInfo).reason == "ROLE_REQUIRED"
        err = rpc_error(ci.admin.GetProfile, admin_pb2.GetProfileRequest())
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert detail(err, error_details_pb2.ErrorInfo).reason == "PEOPLE_ONLY"

        # Audited as itself; the key records its use.
        events = owner.client.audit.ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(parent=org, filter=f'actor = "{account.name}"')
        ).audit_events
        assert events, "the job's calls are audited as the service account"
        keys = accounts.ListServiceAccountKeys(
            service_account_pb2.ListServiceAccountKeysRequest(parent=account.name)
        ).keys
        assert [k.name for k in keys] == [key.name]
        assert keys[0].HasField("last_used_time")

        # Shortly before the token expires, the next call trades the key again first.
        ci._session.expiry = time.time() + 1
        ci.commands.ListCommands(commands_pb2.ListCommandsRequest(parent=org))
        assert ci.access_token and ci.access_token != token
        assert ci.access_token_expire_time > datetime.datetime.now(
            datetime.timezone.utc
        ) + datetime.timedelta(seconds=60)
        token = ci.access_token
        # A stream too, authenticated with the new token: the run does not exist (NOT_FOUND,
        # not UNAUTHENTICATED).
        ci._session.expiry = time.time() + 1
        err = rpc_error(
            lambda: list(ci.commands.WatchRun(commands_pb2.WatchRunRequest(name=f"{org}/runs/none")))
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND, err
        assert ci.access_token != token
        token = ci.access_token

        # The owner deletes the key: the job's very next call fails.
        accounts.DeleteServiceAccountKey(
            service_account_pb2.DeleteServiceAccountKeyRequest(name=key.name)
        )
        err = rpc_error(ci.commands.ListCommands, commands_pb2.ListCommandsRequest(parent=org))
        assert err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
        if err.code() == grpc.StatusCode.PERMISSION_DENIED:
            assert detail(err, error_details_pb2.ErrorInfo).reason == "CALLER_DELETED"
        # Its token is due: the exchange is refused, the token (not expired yet) still used,
        # and refused.
        ci._session.expiry = time.time() + 1
        err = rpc_error(ci.commands.ListCommands, commands_pb2.ListCommandsRequest(parent=org))
        assert err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
        # Its token expired: the refused exchange fails the call.
        ci._session.expiry = time.time() - 1
        err = rpc_error(ci.commands.ListCommands, commands_pb2.ListCommandsRequest(parent=org))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert api_key not in str(err)
        assert ci.access_token == token  # the refused exchanges changed nothing

    with server.client() as again:
        err = rpc_error(again.sign_in_with_api_key, api_key)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert not again.uses_api_key and again.access_token is None

    accounts.DeleteServiceAccount(service_account_pb2.DeleteServiceAccountRequest(name=account.name))
