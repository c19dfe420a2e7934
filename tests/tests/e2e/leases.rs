//! Caller leases: a service reuses its re-check of a caller for `internal.caller_lease_ms`, and
//! every write that narrows what a caller holds waits the lease out before it answers. So a
//! revocation that has returned is honoured by every replica on the next call, even while the
//! caller keeps that replica's lease warm with calls of its own, and a caller calling again
//! within its lease costs the services no re-check.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use steward_proto::admin::v1::{
    Administrator, DeleteServiceAccountKeyRequest, GetAdministratorRequest, Role, RoleDefinition,
    UpdateRoleRequest,
};
use steward_proto::auth::v1::{RefreshSessionRequest, TokenSet};
use steward_proto::client::Steward;
use steward_proto::commands::v1::{CheckAccessRequest, ListGrantsRequest};
use steward_server::ServiceKind;
use tonic::{Code, Status};

use crate::admin::{delete, set_role, update};
use crate::commands::{create_command, try_grant};
use crate::custom_roles::create_role;
use crate::harness::{reason, Owner};
use crate::service_accounts::{create_account, create_key};

async fn get_owner(client: &Steward, owner: &Owner) -> Result<(), Status> {
    get_administrator(client, &owner.admin).await
}

async fn get_administrator(client: &Steward, name: &str) -> Result<(), Status> {
    let request = GetAdministratorRequest { name: name.to_string() };
    client.admin().get_administrator(request).await.map(|_| ())
}

async fn refresh(client: &Steward, refresh_token: &str) -> Result<TokenSet, Status> {
    let request = RefreshSessionRequest { refresh_token: refresh_token.to_string() };
    Ok(client.auth().refresh_session(request).await?.into_inner().tokens.unwrap_or_default())
}

async fn check_access(client: &Steward) -> Result<(), Status> {
    let request = CheckAccessRequest { permission: "commands.read".into(), ..Default::default() };
    client.commands().check_access(request).await.map(|_| ())
}

/// Calls GetAdministrator and CheckAccess as `client` in a loop until dropped, so the replica
/// always holds a lease on the caller read moments ago, the likeliest to be stale.
struct Warm(Arc<AtomicBool>);

impl Warm {
    fn start(client: Steward, owner: &Owner) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let name = owner.admin.clone();
        let flag = stop.clone();
        tokio::spawn(async move {
            while !flag.load(Ordering::Relaxed) {
                let _ = get_administrator(&client, &name).await;
                let _ = check_access(&client).await;
            }
        });
        Self(stop)
    }
}

impl Drop for Warm {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Notes in `stale` unless `result` is `PERMISSION_DENIED` for `why` (every step is checked,
/// so a failure lists each write that did not wait).
fn refused(stale: &mut Vec<String>, result: Result<(), Status>, why: &str, what: &str) {
    match result {
        Err(status) if status.code() == Code::PermissionDenied && reason(&status) == why => {}
        other => stale.push(format!("{what}: expected {why}, got {other:?}")),
    }
}

// A person demoted, then deleted, and a machine whose role is narrowed, then whose key is
// deleted, each on the primary while a replica is kept warm with the caller's own calls: the
// replica refuses the very next call after each write returns, in the admin service (its own
// lease) and in the command service (its lease on the admin service's answer); and a refresh
// right after a second factor is required ends the session.
backend_test!(a_revocation_that_returned_is_honoured_by_a_warm_replica, |stack| async move {
    let mut stack = stack;
    let owner = stack.owner().await;
    let replica = stack.add_replica().await;
    let mut stale = Vec::new();

    // The auth service leases what it mints tokens from: once a second factor is required of
    // someone who has none, the next refresh ends the session, even right after a refresh
    // that leased the administrator as it was.
    let newcomer = stack.member(&owner, Role::HelpDesk, false).await;
    let at_replica = stack.client_at(&replica).await;
    let refreshed = refresh(&at_replica, &newcomer.tokens.refresh_token).await.unwrap();
    let require =
        Administrator { name: newcomer.name.clone(), mfa_required: true, ..Default::default() };
    update(&owner.client, require, &["mfa_required"]).await.unwrap();
    match refresh(&at_replica, &refreshed.refresh_token).await {
        Err(status) if status.code() == Code::Unauthenticated => {}
        other => stale.push(format!("second factor required, refresh: {other:?}")),
    }

    let person = stack.member(&owner, Role::HelpDesk, false).await;
    let at_replica =
        stack.client_at(&replica).await.with_token(&person.tokens.access_token).unwrap();
    get_owner(&at_replica, &owner).await.unwrap();
    check_access(&at_replica).await.unwrap();
    {
        let _warm = Warm::start(at_replica.clone(), &owner);
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        set_role(&owner.client, &person.name, Role::CommandRunner).await.unwrap();
        refused(
            &mut stale,
            get_owner(&at_replica, &owner).await,
            "ROLE_REQUIRED",
            "demoted, admin",
        );
        // A Command Runner still checks its own access.
        check_access(&at_replica).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        delete(&owner.client, &owner.org, &[person.name.as_str()], false).await.unwrap();
        refused(&mut stale, check_access(&at_replica).await, "CALLER_DELETED", "deleted, commands");
        refused(
            &mut stale,
            get_owner(&at_replica, &owner).await,
            "CALLER_DELETED",
            "deleted, admin",
        );
    }

    let role = create_role(
        &owner.client,
        &owner.org,
        "reader",
        &["administrators.read", "access.check", "commands.read"],
    )
    .await
    .unwrap();
    let account = create_account(&owner.client, &owner.org, &role.name, false).await.unwrap();
    let (key, secret) = create_key(&stack, &owner.client, &account.name, 30).await.unwrap();
    let machine = stack.client_at(&replica).await;
    machine.sign_in_with_api_key(&secret).await.unwrap();
    get_owner(&machine, &owner).await.unwrap();
    check_access(&machine).await.unwrap();
    {
        let _warm = Warm::start(machine.clone(), &owner);
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        let narrow = UpdateRoleRequest {
            role: Some(RoleDefinition {
                name: role.name.clone(),
                etag: role.etag.clone(),
                permissions: vec!["access.check".into(), "commands.read".into()],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["permissions".into()] }),
        };
        owner.client.roles().update_role(narrow).await.unwrap();
        refused(&mut stale, get_owner(&machine, &owner).await, "ROLE_REQUIRED", "narrowed, admin");
        check_access(&machine).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        let revoke = DeleteServiceAccountKeyRequest { name: key.name.clone() };
        owner.client.service_accounts().delete_service_account_key(revoke).await.unwrap();
        refused(
            &mut stale,
            check_access(&machine).await,
            "CALLER_DELETED",
            "key deleted, commands",
        );
    }
    assert!(stale.is_empty(), "answered from a lease past the write that revoked it: {stale:#?}");
});

// Within its lease a caller's calls cost no re-check: twenty GetAdministrator calls in a row
// run fewer statements than twenty re-checks and twenty reads would, and twenty CheckAccess
// calls make the admin service read far fewer than twenty times (both fail with
// `internal.caller_lease_ms = 0`, which re-checks every call).
backend_test!(calls_within_a_lease_skip_the_re_check, |stack| async move {
    let owner = stack.owner().await;
    get_owner(&owner.client, &owner).await.unwrap();
    let before = stack.statements(ServiceKind::Admin);
    for _ in 0..20 {
        get_owner(&owner.client, &owner).await.unwrap();
    }
    let ran = stack.statements(ServiceKind::Admin) - before;
    // 20 reads of the administrator, plus a re-check each time a lease ends (every 100 ms),
    // plus whatever background work ran meanwhile.
    assert!(ran < 35, "{ran} statements for 20 calls: the lease is not reused");
    // The command service asks the admin service once per lease, not once per call.
    check_access(&owner.client).await.unwrap();
    let before = stack.statements(ServiceKind::Admin);
    for _ in 0..20 {
        check_access(&owner.client).await.unwrap();
    }
    let looked_up = stack.statements(ServiceKind::Admin) - before;
    assert!(looked_up < 12, "{looked_up} admin statements for 20 access checks");
});

// A lease is never longer than the admin service that answered waits after its writes: a
// command service set to 100 ms, asking an admin service set to 0 (as one from before leases,
// which waits nothing, would answer during a rolling upgrade), asks again on every call.
backend_test!(a_lease_is_never_longer_than_the_answering_service_waits, |stack| async move {
    let mut stack = stack;
    let owner = stack.owner().await;
    stack.add_server(vec![ServiceKind::Admin], |c| c.internal.caller_lease_ms = 0).await;
    let admin = stack.last_internal_url();
    let commands =
        stack.add_server(vec![ServiceKind::Commands], |c| c.internal.admin_url = admin).await;
    let client = stack.client_at(&commands).await.with_token(&owner.tokens.access_token).unwrap();
    check_access(&client).await.unwrap();
    let before = stack.statements(ServiceKind::Admin);
    for _ in 0..20 {
        check_access(&client).await.unwrap();
    }
    let looked_up = stack.statements(ServiceKind::Admin) - before;
    assert!(looked_up >= 20, "{looked_up} admin statements for 20 checks: an answer was kept");
});

// CreateGrant commits only while its check of the grantee is younger than a lease (a demotion
// removes grants once its own wait is over, so an older check could outlive it): with a lease
// of 1 ms, shorter than recording a grant takes, the grantee is checked a second time before
// the commit, and the grant is recorded exactly when the call says so.
backend_test!(
    a_grant_checked_longer_ago_than_a_lease_checks_again,
    start = |backend| crate::harness::Stack::start_with(backend, |c| {
        c.internal.caller_lease_ms = 1;
    }),
    |stack| async move {
        let owner = stack.owner().await;
        let runner = stack.member(&owner, Role::CommandRunner, false).await;
        let command = create_command(&owner, "uptime", &[]).await;
        let before = stack.statements(ServiceKind::Admin);
        let result = try_grant(&owner, &command.name, &runner.name).await;
        // The caller's re-check and two of the grantee, one statement each.
        let looked_up = stack.statements(ServiceKind::Admin) - before;
        assert!(looked_up >= 3, "{looked_up} admin statements: the grantee was checked once");
        let request = ListGrantsRequest { parent: command.name.clone(), ..Default::default() };
        let grants = owner.client.commands().list_grants(request).await.unwrap().into_inner();
        match result {
            Ok(grant) => assert_eq!(grants.grants, vec![grant]),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(grants.grants.is_empty(), "{grants:?}");
            }
        }
    }
);
