//! The built-in roles beyond the seed's two, each walked through as its holder would use it:
//! what a Manager, a Help Desk and a Read Only administrator may and may not do, where the
//! answer depends on more than the layer's permission check (scopes, targets, escalation).

use steward_proto::admin::v1::{
    Administrator, CreateAdministratorRequest, ListAdministratorsRequest,
    ResetAdministratorMfaRequest, Role, UpdateAdministratorRequest,
};
use steward_proto::audit::v1::ListAuditEventsRequest;
use steward_proto::billing::v1::GetPaymentCardRequest;
use steward_proto::client::Steward;
use steward_proto::commands::v1::{
    Action, CancelRunRequest, DecisionReason, GetRunRequest, ListCommandsRequest, ListRunsRequest,
};
use tonic::{Code, Status};

use crate::commands::{check, create_command, register, run, try_grant};
use crate::harness::{reason, refused};

backend_test!(a_manager_runs_the_fleet_but_not_the_people, |stack| async move {
    let owner = stack.owner().await;
    let manager = stack.member(&owner, Role::Manager, false).await;
    let (system, _) = register(&stack, &owner, "web-1").await;
    // A Manager creates and runs any command of the organization without a grant.
    let mine = create_command(&owner, "disk", &[&system]).await;
    let run = run(&manager.client, &mine.name, &[]).await.unwrap();
    assert_eq!(run.runner, manager.name);
    let decision = check(&manager.client, &manager.name, &mine.name, Action::Run, &system).await;
    let decision = decision.unwrap();
    assert!(decision.allowed);
    assert_eq!(decision.reason, DecisionReason::RolePermission as i32, "{}", decision.message);
    assert!(decision.message.contains("commands.run"), "{}", decision.message);
    // It sees every run, not only its own.
    let listed = manager
        .client
        .commands()
        .list_runs(ListRunsRequest { parent: owner.org.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.runs.iter().any(|r| r.name == run.name));
    // It checks its own access, not other people's (it cannot read administrators).
    let other = crate::commands::check(&manager.client, &owner.admin, &mine.name, Action::Read, "");
    refused(other.await, Code::PermissionDenied, "NOT_SELF");
    // A grant to a Manager is pointless and refused.
    let pointless = try_grant(&owner, &mine.name, &manager.name).await;
    refused(pointless, Code::FailedPrecondition, "GRANTEE_RUNS_EVERY_COMMAND");
    // It reads the audit log, but nothing about administrators, and cannot create any.
    manager
        .client
        .audit()
        .list_audit_events(ListAuditEventsRequest {
            parent: owner.org.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let list = manager
        .client
        .admin()
        .list_administrators(ListAdministratorsRequest {
            parent: owner.org.clone(),
            ..Default::default()
        })
        .await;
    refused(list, Code::PermissionDenied, "ROLE_REQUIRED");
    let create = manager
        .client
        .admin()
        .create_administrator(CreateAdministratorRequest {
            parent: owner.org.clone(),
            administrator: Some(Administrator {
                email: "escalate@example.com".into(),
                role: Role::Administrator as i32,
                ..Default::default()
            }),
            request_id: uuid::Uuid::new_v4().to_string(),
        })
        .await;
    refused(create, Code::PermissionDenied, "ROLE_REQUIRED");
});

backend_test!(a_help_desk_helps_people_but_never_above_itself, |stack| async move {
    let owner = stack.owner().await;
    let desk = stack.member(&owner, Role::HelpDesk, false).await;
    let manager = stack.member(&owner, Role::Manager, false).await;
    let runner = stack.member(&owner, Role::CommandRunner, false).await;
    let other_admin = stack.member(&owner, Role::Administrator, false).await;
    // Reads administrators.
    let listed = desk
        .client
        .admin()
        .list_administrators(ListAdministratorsRequest {
            parent: owner.org.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.administrators.len(), 5);
    // Resets the second factor of people who cannot manage administrators, not of an
    // Administrator.
    async fn reset(client: &Steward, name: &str) -> Result<(), Status> {
        let request = ResetAdministratorMfaRequest { name: name.to_string() };
        client.admin().reset_administrator_mfa(request).await.map(|_| ())
    }
    reset(&desk.client, &runner.name).await.unwrap();
    reset(&desk.client, &manager.name).await.unwrap();
    let above = reset(&desk.client, &other_admin.name).await;
    refused(above, Code::PermissionDenied, "TARGET_OUTRANKS_CALLER");
    let owner_reset = reset(&desk.client, &owner.admin).await;
    refused(owner_reset, Code::PermissionDenied, "TARGET_OUTRANKS_CALLER");
    // Changes no one's role.
    let promote = desk
        .client
        .admin()
        .update_administrator(UpdateAdministratorRequest {
            administrator: Some(Administrator {
                name: desk.name.clone(),
                role: Role::Administrator as i32,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["role".into()] }),
        })
        .await;
    refused(promote, Code::PermissionDenied, "ROLE_REQUIRED");

    // Runs only granted commands; reads every run but cancels only its own.
    let (system, _) = register(&stack, &owner, "web-1").await;
    let granted = create_command(&owner, "granted", &[&system]).await;
    let other = create_command(&owner, "other", &[&system]).await;
    try_grant(&owner, &granted.name, &desk.name).await.unwrap();
    let own_run = run(&desk.client, &granted.name, &[]).await.unwrap();
    refused(run(&desk.client, &other.name, &[]).await, Code::PermissionDenied, "NO_GRANT");
    let visible = desk
        .client
        .commands()
        .list_commands(ListCommandsRequest { parent: owner.org.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = visible.commands.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, [granted.name.as_str()]);
    let owners_run = run(&owner.client, &other.name, &[]).await.unwrap();
    let read = GetRunRequest { name: owners_run.name.clone(), ..Default::default() };
    let read = desk.client.commands().get_run(read).await.unwrap().into_inner();
    assert_eq!(read.run.unwrap().name, owners_run.name);
    async fn cancel(client: &Steward, name: &str) -> Result<(), Status> {
        let request = CancelRunRequest { name: name.to_string() };
        client.commands().cancel_run(request).await.map(|_| ())
    }
    let others = cancel(&desk.client, &owners_run.name).await;
    refused(others, Code::PermissionDenied, "NOT_OWN_RUN");
    cancel(&desk.client, &own_run.name).await.unwrap();
});

backend_test!(a_read_only_auditor_reads_everything_and_changes_nothing, |stack| async move {
    let owner = stack.owner().await;
    let auditor = stack.member(&owner, Role::ReadOnly, false).await;
    let billing_auditor = stack.member(&owner, Role::ReadOnly, true).await;
    let (system, _) = register(&stack, &owner, "web-1").await;
    let command = create_command(&owner, "disk", &[&system]).await;
    // Reads administrators, every command (no grant needed) and the audit log.
    let listed = auditor
        .client
        .admin()
        .list_administrators(ListAdministratorsRequest {
            parent: owner.org.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.administrators.len(), 3);
    let commands = auditor
        .client
        .commands()
        .list_commands(ListCommandsRequest { parent: owner.org.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(commands.commands.len(), 1);
    let events = auditor
        .client
        .audit()
        .list_audit_events(ListAuditEventsRequest {
            parent: owner.org.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!events.audit_events.is_empty());
    // Never the payment card without the billing flag; the flag works with any role.
    async fn card(client: &Steward, org: &str) -> Result<(), Status> {
        let request = GetPaymentCardRequest { name: format!("{org}/paymentCard") };
        client.billing().get_payment_card(request).await.map(|_| ())
    }
    refused(card(&auditor.client, &owner.org).await, Code::PermissionDenied, "BILLING_REQUIRED");
    let with_flag = card(&billing_auditor.client, &owner.org).await;
    assert_ne!(with_flag.as_ref().err().map(reason).as_deref(), Some("BILLING_REQUIRED"));
    // Runs nothing, and no grant can change that.
    refused(
        run(&auditor.client, &command.name, &[]).await,
        Code::PermissionDenied,
        "ROLE_REQUIRED",
    );
    let decision =
        check(&owner.client, &auditor.name, &command.name, Action::Run, &system).await.unwrap();
    assert!(!decision.allowed);
    assert_eq!(decision.reason, DecisionReason::MissingPermission as i32, "{}", decision.message);
    let read = check(&owner.client, &auditor.name, &command.name, Action::Read, "").await.unwrap();
    assert!(read.allowed, "{}", read.message);
    refused(
        try_grant(&owner, &command.name, &auditor.name).await,
        Code::FailedPrecondition,
        "GRANTEE_CANNOT_RUN",
    );
});

backend_test!(built_in_roles_can_be_assigned_by_name_and_filtered, |stack| async move {
    let owner = stack.owner().await;
    let created = owner
        .client
        .admin()
        .create_administrator(CreateAdministratorRequest {
            parent: owner.org.clone(),
            administrator: Some(Administrator {
                email: "desk@example.com".into(),
                role_name: "roles/help-desk".into(),
                ..Default::default()
            }),
            request_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .administrator
        .unwrap();
    assert_eq!(
        (created.role, created.role_name.as_str()),
        (Role::HelpDesk as i32, "roles/help-desk")
    );
    for filter in ["role = ROLE_HELP_DESK", "role = roles/help-desk"] {
        let listed = owner
            .client
            .admin()
            .list_administrators(ListAdministratorsRequest {
                parent: owner.org.clone(),
                filter: filter.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let names: Vec<_> = listed.administrators.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, [created.name.as_str()], "{filter}");
    }
});
