//! An organization's own roles: created, assigned, changed and deleted, and never a way to hand
//! out more than one holds.

use steward_proto::admin::v1::{
    Administrator, CreateAdministratorRequest, CreateRoleRequest, DeleteRoleRequest,
    GetProfileRequest, GetRoleRequest, ListAdministratorsRequest, ListRolesRequest, Role,
    RoleDefinition, UpdateAdministratorRequest, UpdateRoleRequest,
};
use steward_proto::audit::v1::ListAuditEventsRequest;
use steward_proto::client::Steward;
use steward_proto::commands::v1::ListCommandsRequest;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::harness::{refused, Owner, Stack};

pub(crate) async fn create_role(
    client: &Steward,
    org: &str,
    id: &str,
    permissions: &[&str],
) -> Result<RoleDefinition, Status> {
    let request = CreateRoleRequest {
        parent: org.to_string(),
        role_id: id.to_string(),
        role: Some(RoleDefinition {
            display_name: format!("role {id}"),
            description: "made by a test".into(),
            permissions: permissions.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }),
    };
    Ok(client.roles().create_role(request).await?.into_inner().role.unwrap())
}

async fn invite(
    client: &Steward,
    org: &str,
    email: &str,
    role: Role,
    name: &str,
) -> Result<String, Status> {
    let request = CreateAdministratorRequest {
        parent: org.to_string(),
        administrator: Some(Administrator {
            email: email.into(),
            role: role as i32,
            role_name: name.into(),
            ..Default::default()
        }),
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    Ok(client.admin().create_administrator(request).await?.into_inner().administrator.unwrap().name)
}

/// Creates an administrator holding `role` (an organization's own) and signs it in.
pub(crate) async fn holder(stack: &Stack, owner: &Owner, role: &str) -> (String, Steward) {
    let (name, tokens) = holder_tokens(stack, owner, role).await;
    (name, stack.client().await.with_token(&tokens.access_token).unwrap())
}

/// [`holder`], answering its tokens.
pub(crate) async fn holder_tokens(
    stack: &Stack,
    owner: &Owner,
    role: &str,
) -> (String, steward_proto::auth::v1::TokenSet) {
    let email = format!("holder-{}@example.com", uuid::Uuid::new_v4().simple());
    let name = invite(&owner.client, &owner.org, &email, Role::Custom, role).await.unwrap();
    (name, stack.accept_and_sign_in(&email).await)
}

backend_test!(a_custom_role_is_created_assigned_changed_and_deleted, |stack| async move {
    let owner = stack.owner().await;
    let auditor = create_role(
        &owner.client,
        &owner.org,
        "auditor-plus",
        &["audit.read", "administrators.read", "commands.read"],
    )
    .await
    .unwrap();
    assert_eq!(auditor.name, format!("{}/roles/auditor-plus", owner.org));
    assert_eq!(auditor.role, Role::Custom as i32);
    assert!(!auditor.etag.is_empty());
    // What every role holds comes with it.
    assert!(auditor.permissions.iter().any(|p| p == "profile.read"));
    let listed = owner.client.roles().list_roles(ListRolesRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.roles.last().unwrap(), &auditor);
    let again = create_role(&owner.client, &owner.org, "auditor-plus", &[]).await;
    assert_eq!(again.unwrap_err().code(), Code::AlreadyExists);

    // Its holder may do exactly what it lists.
    let (holder_name, holder) = holder(&stack, &owner, &auditor.name).await;
    let me = holder.admin().get_profile(GetProfileRequest {}).await.unwrap().into_inner();
    let me = me.profile.unwrap().administrator.unwrap();
    assert_eq!((me.role, me.role_name.as_str()), (Role::Custom as i32, auditor.name.as_str()));
    let list = ListAdministratorsRequest { parent: owner.org.clone(), ..Default::default() };
    holder.admin().list_administrators(list).await.unwrap();
    let events = ListAuditEventsRequest { parent: owner.org.clone(), ..Default::default() };
    holder.audit().list_audit_events(events).await.unwrap();
    let commands = ListCommandsRequest { parent: owner.org.clone(), ..Default::default() };
    holder.commands().list_commands(commands).await.unwrap();
    let create = create_role(&holder, &owner.org, "mine", &[]).await;
    let denied = refused(create, Code::PermissionDenied, "ROLE_REQUIRED");
    assert!(denied.message().contains("roles.create"), "{}", denied.message());

    // A change needs the current etag; narrowing takes effect at once in every service.
    let update = |etag: &str, permissions: &[&str]| UpdateRoleRequest {
        role: Some(RoleDefinition {
            name: auditor.name.clone(),
            etag: etag.to_string(),
            permissions: permissions.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["permissions".into()] }),
    };
    let narrowed = owner
        .client
        .roles()
        .update_role(update(&auditor.etag, &["audit.read"]))
        .await
        .unwrap()
        .into_inner()
        .role
        .unwrap();
    assert_ne!(narrowed.etag, auditor.etag);
    let stale = owner.client.roles().update_role(update(&auditor.etag, &[])).await;
    assert_eq!(stale.unwrap_err().code(), Code::Aborted);
    let list = ListAdministratorsRequest { parent: owner.org.clone(), ..Default::default() };
    refused(
        holder.admin().list_administrators(list).await,
        Code::PermissionDenied,
        "ROLE_REQUIRED",
    );
    let commands = ListCommandsRequest { parent: owner.org.clone(), ..Default::default() };
    refused(
        holder.commands().list_commands(commands).await,
        Code::PermissionDenied,
        "ROLE_REQUIRED",
    );

    // Held, it cannot be deleted; the refusal names the holder.
    let delete = DeleteRoleRequest { name: auditor.name.clone(), etag: String::new() };
    let in_use = owner.client.roles().delete_role(delete.clone()).await;
    let in_use = refused(in_use, Code::FailedPrecondition, "ROLE_IN_USE");
    let holders = in_use.get_error_details().precondition_failure().unwrap().violations.clone();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].subject, holder_name);
    owner
        .client
        .admin()
        .update_administrator(UpdateAdministratorRequest {
            administrator: Some(Administrator {
                name: holder_name.clone(),
                role_name: "roles/read-only".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["role_name".into()] }),
        })
        .await
        .unwrap();
    owner.client.roles().delete_role(delete).await.unwrap();
    let gone = owner.client.roles().get_role(GetRoleRequest { name: auditor.name.clone() }).await;
    assert_eq!(gone.unwrap_err().code(), Code::NotFound);
    // A deleted role cannot be assigned.
    let assign = invite(&owner.client, &owner.org, "late@example.com", Role::Custom, &auditor.name);
    assert_eq!(assign.await.unwrap_err().code(), Code::NotFound);
});

backend_test!(no_one_hands_out_more_than_they_hold, |stack| async move {
    let owner = stack.owner().await;
    // A people manager: may invite and create roles, but holds nothing about commands.
    let people = create_role(
        &owner.client,
        &owner.org,
        "people",
        &["administrators.create", "administrators.read", "roles.create"],
    )
    .await
    .unwrap();
    let (_, manager_of_people) = holder(&stack, &owner, &people.name).await;
    let wider = create_role(&manager_of_people, &owner.org, "runner-plus", &["commands.run"]).await;
    let wider = refused(wider, Code::PermissionDenied, "ROLE_ESCALATION");
    assert!(wider.message().contains("commands.run"), "{}", wider.message());
    create_role(&manager_of_people, &owner.org, "readers", &["administrators.read"]).await.unwrap();
    for (role, name) in [(Role::Administrator, ""), (Role::Manager, ""), (Role::Custom, "")] {
        let name = if role == Role::Custom { owner_role(&owner).await } else { name.to_string() };
        let email = format!("x-{}@example.com", uuid::Uuid::new_v4().simple());
        let assign = invite(&manager_of_people, &owner.org, &email, role, &name).await;
        refused(assign, Code::PermissionDenied, "ROLE_ESCALATION");
    }
    // It may assign what it holds: Read Only holds reads it lacks (commands.read), so not that.
    let email = "reader@example.com";
    let readers = format!("{}/roles/readers", owner.org);
    invite(&manager_of_people, &owner.org, email, Role::Custom, &readers).await.unwrap();

    // Granting a command needs running every command: a role that may grant but not run
    // cannot hand out runs.
    let approver = create_role(
        &owner.client,
        &owner.org,
        "approver",
        &["grants.create", "grants.read", "commands.read"],
    )
    .await
    .unwrap();
    let (_, approver) = holder(&stack, &owner, &approver.name).await;
    let runner = stack.member(&owner, Role::CommandRunner, false).await;
    let command = crate::commands::create_command(&owner, "wipe", &[]).await;
    let request = steward_proto::commands::v1::CreateGrantRequest {
        parent: command.name.clone(),
        grant: Some(steward_proto::commands::v1::Grant {
            grantee: runner.name.clone(),
            ..Default::default()
        }),
        request_id: String::new(),
    };
    let grant = approver.commands().create_grant(request).await;
    refused(grant, Code::PermissionDenied, "ROLE_ESCALATION");

    // A Manager may not create roles at all; billing and unknown permissions are refused.
    let manager = stack.member(&owner, Role::Manager, false).await;
    let none = create_role(&manager.client, &owner.org, "m", &["commands.run"]).await;
    refused(none, Code::PermissionDenied, "ROLE_REQUIRED");
    for bad in ["billing.read", "commands.fly"] {
        let invalid = create_role(&owner.client, &owner.org, "bad", &[bad]).await.unwrap_err();
        assert_eq!(invalid.code(), Code::InvalidArgument, "{bad}: {invalid:?}");
    }
    let bad_id = create_role(&owner.client, &owner.org, "Bad_Id", &[]).await.unwrap_err();
    assert_eq!(bad_id.code(), Code::InvalidArgument);
    // Another organization's role is neither readable nor assignable.
    let stranger = stack.owner().await;
    let theirs = create_role(&stranger.client, &stranger.org, "theirs", &[]).await.unwrap();
    let read = owner.client.roles().get_role(GetRoleRequest { name: theirs.name.clone() }).await;
    refused(read, Code::PermissionDenied, "WRONG_ORGANIZATION");
    let assign = invite(&owner.client, &owner.org, "y@example.com", Role::Custom, &theirs.name);
    refused(assign.await, Code::PermissionDenied, "WRONG_ORGANIZATION");
});

/// An organization role holding everything an Administrator holds (so a narrower caller may
/// not assign it).
async fn owner_role(owner: &Owner) -> String {
    let all: Vec<String> = owner
        .client
        .roles()
        .get_role(GetRoleRequest { name: "roles/administrator".into() })
        .await
        .unwrap()
        .into_inner()
        .role
        .unwrap()
        .permissions;
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let id = format!("all-{}", uuid::Uuid::new_v4().simple());
    create_role(&owner.client, &owner.org, &id, &all).await.unwrap().name
}
