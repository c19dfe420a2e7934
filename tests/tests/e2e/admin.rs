//! The admin service from outside (issue 4): the seed's three procedures, every refusal of the
//! safeguards and of the role table, billing without storing the card, the audit log, racing
//! replicas on one database, and invites that survive an auth outage.

use std::sync::Arc;
use std::time::Duration;

use steward_proto::admin::v1::admin_internal_service_client::AdminInternalServiceClient;
use steward_proto::admin::v1::organization_service_client::OrganizationServiceClient;
use steward_proto::admin::v1::{
    administrator, Administrator, BatchDeleteAdministratorsRequest, CreateAdministratorRequest,
    GetAdministratorRequest, GetOrganizationRequest, GetProfileRequest, ListAdministratorsRequest,
    ListOrganizationsRequest, LookupAdministratorRequest, RecordAuditEventsRequest,
    ResendInviteRequest, ResetAdministratorMfaRequest, Role, UpdateAdministratorRequest,
    UpdateProfileRequest,
};
use steward_proto::audit::v1::{audit_event, AuditEvent, ListAuditEventsRequest};
use steward_proto::billing::v1::{
    CardBrand, GetPaymentCardRequest, PaymentCard, UpdatePaymentCardRequest,
};
use steward_proto::client::Steward;
use steward_server::ServiceKind;
use steward_storage::testing::Backend;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::harness::{reason, Owner, Stack, PASSWORD};

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() })
}

fn email() -> String {
    format!("admin-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// `(type, subject)` of every PreconditionFailure violation.
fn violations(status: &Status) -> Vec<(String, String)> {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let details = status.get_error_details();
    let failure = details.precondition_failure().expect("PreconditionFailure detail");
    failure.violations.iter().map(|v| (v.r#type.clone(), v.subject.clone())).collect()
}

/// Fields named by the BadRequest detail.
fn bad_fields(status: &Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let bad = details.bad_request().expect("BadRequest detail");
    bad.field_violations.iter().map(|v| v.field.clone()).collect()
}

async fn create(
    client: &Steward,
    org: &str,
    email: &str,
    role: Role,
) -> Result<Administrator, Status> {
    client
        .admin()
        .create_administrator(CreateAdministratorRequest {
            parent: org.into(),
            administrator: Some(Administrator {
                email: email.into(),
                role: role as i32,
                ..Default::default()
            }),
            request_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .map(|r| r.into_inner().administrator.unwrap())
}

async fn get(client: &Steward, name: &str) -> Result<Administrator, Status> {
    client
        .admin()
        .get_administrator(GetAdministratorRequest { name: name.into() })
        .await
        .map(|r| r.into_inner().administrator.unwrap())
}

pub(crate) async fn delete(
    client: &Steward,
    org: &str,
    names: &[&str],
    validate_only: bool,
) -> Result<Vec<Administrator>, Status> {
    client
        .admin()
        .batch_delete_administrators(BatchDeleteAdministratorsRequest {
            parent: org.into(),
            names: names.iter().map(|n| n.to_string()).collect(),
            validate_only,
        })
        .await
        .map(|r| r.into_inner().administrators)
}

pub(crate) async fn update(
    client: &Steward,
    admin: Administrator,
    paths: &[&str],
) -> Result<Administrator, Status> {
    client
        .admin()
        .update_administrator(UpdateAdministratorRequest {
            administrator: Some(admin),
            update_mask: mask(paths),
        })
        .await
        .map(|r| r.into_inner().administrator.unwrap())
}

pub(crate) async fn set_role(
    client: &Steward,
    name: &str,
    role: Role,
) -> Result<Administrator, Status> {
    update(
        client,
        Administrator { name: name.into(), role: role as i32, ..Default::default() },
        &["role"],
    )
    .await
}

async fn list(client: &Steward, org: &str, filter: &str) -> Vec<Administrator> {
    client
        .admin()
        .list_administrators(ListAdministratorsRequest {
            parent: org.into(),
            filter: filter.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .administrators
}

async fn active_administrators(client: &Steward, org: &str) -> usize {
    list(client, org, "role = ROLE_ADMINISTRATOR AND state = STATE_ACTIVE").await.len()
}

backend_test!(seed_walkthrough, |stack| async move {
    let owner = stack.owner().await;

    // Create a Command Runner (with What's New) and an Administrator; a retried create with the
    // same request_id creates nothing new.
    let runner_email = email();
    let request = CreateAdministratorRequest {
        parent: owner.org.clone(),
        administrator: Some(Administrator {
            email: runner_email.clone(),
            role: Role::CommandRunner as i32,
            whats_new: true,
            ..Default::default()
        }),
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    let runner = owner
        .client
        .admin()
        .create_administrator(request.clone())
        .await
        .unwrap()
        .into_inner()
        .administrator
        .unwrap();
    let again = owner
        .client
        .admin()
        .create_administrator(request)
        .await
        .unwrap()
        .into_inner()
        .administrator
        .unwrap();
    assert_eq!(again.name, runner.name);
    assert_eq!(runner.state, administrator::State::Invited as i32);
    assert_eq!(runner.invited_by, owner.admin);
    assert!(runner.whats_new && !runner.billing && !runner.mfa_required);
    assert!(runner.activate_time.is_none());

    let admin_email = email();
    let second =
        create(&owner.client, &owner.org, &admin_email, Role::Administrator).await.unwrap();
    assert_eq!(list(&owner.client, &owner.org, "").await.len(), 3);

    // The invite mail arrives with a working link: accept it and sign in.
    let tokens = stack.accept_and_sign_in(&admin_email).await;
    let second_client = stack.client().await.with_token(&tokens.access_token).unwrap();
    let activated = get(&owner.client, &second.name).await.unwrap();
    assert_eq!(activated.state, administrator::State::Active as i32);
    assert!(activated.activate_time.is_some());
    let profile = second_client
        .admin()
        .get_profile(GetProfileRequest {})
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap();
    assert_eq!(profile.administrator.unwrap().name, second.name);
    assert_eq!(profile.organization.unwrap().display_name, "Acme");

    // Resend: only while invited; a new link each time.
    let first_token = stack.wait_for_token(&runner_email).await;
    let resent = owner
        .client
        .admin()
        .resend_invite(ResendInviteRequest { name: runner.name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(resent.invite_expire_time.is_some());
    let second_token = stack.wait_for_new_token(&runner_email, Some(&first_token)).await;
    assert_ne!(first_token, second_token);
    let err = owner
        .client
        .admin()
        .resend_invite(ResendInviteRequest { name: second.name.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Edit: role with the current etag; fields not in the mask are untouched.
    let current = get(&owner.client, &runner.name).await.unwrap();
    let promoted = update(
        &owner.client,
        Administrator {
            name: runner.name.clone(),
            role: Role::Administrator as i32,
            whats_new: false,
            etag: current.etag.clone(),
            ..Default::default()
        },
        &["role"],
    )
    .await
    .unwrap();
    assert_eq!(promoted.role, Role::Administrator as i32);
    assert!(promoted.whats_new, "whats_new was not in the mask");
    assert_ne!(promoted.etag, current.etag);
    // A stale etag is ABORTED and changes nothing.
    let stale = update(
        &owner.client,
        Administrator {
            name: runner.name.clone(),
            mfa_required: true,
            etag: current.etag,
            ..Default::default()
        },
        &["mfa_required"],
    )
    .await
    .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    assert!(!get(&owner.client, &runner.name).await.unwrap().mfa_required);
    // MFA and What's New through the mask; an unknown path is refused.
    let edited = update(
        &owner.client,
        Administrator {
            name: runner.name.clone(),
            mfa_required: true,
            whats_new: false,
            role: Role::CommandRunner as i32,
            ..Default::default()
        },
        &["mfa_required", "whats_new", "role"],
    )
    .await
    .unwrap();
    assert!(edited.mfa_required && !edited.whats_new);
    assert_eq!(edited.role, Role::CommandRunner as i32);
    let err = update(
        &owner.client,
        Administrator {
            name: runner.name.clone(),
            email: "x@example.com".into(),
            ..Default::default()
        },
        &["email"],
    )
    .await
    .unwrap_err();
    assert_eq!(bad_fields(&err), vec!["update_mask"]);
    let err = update(
        &owner.client,
        Administrator { name: runner.name.clone(), ..Default::default() },
        &[],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // What's New for oneself.
    let updated = second_client
        .admin()
        .update_profile(UpdateProfileRequest { whats_new: true, update_mask: mask(&["whats_new"]) })
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap();
    assert!(updated.administrator.unwrap().whats_new);
    let err = second_client
        .admin()
        .update_profile(UpdateProfileRequest { whats_new: true, update_mask: mask(&["role"]) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // MFA reset.
    let reset = owner
        .client
        .admin()
        .reset_administrator_mfa(ResetAdministratorMfaRequest { name: second.name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(!reset.administrator.unwrap().mfa_enrolled);

    // List: filters, order, pagination.
    assert_eq!(list(&owner.client, &owner.org, "role = ROLE_COMMAND_RUNNER").await.len(), 1);
    assert_eq!(list(&owner.client, &owner.org, "state = STATE_INVITED").await.len(), 1);
    assert_eq!(list(&owner.client, &owner.org, "billing = true").await[0].name, owner.admin);
    let err = owner
        .client
        .admin()
        .list_administrators(ListAdministratorsRequest {
            parent: owner.org.clone(),
            filter: "email = x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), vec!["filter"]);
    let page = owner
        .client
        .admin()
        .list_administrators(ListAdministratorsRequest {
            parent: owner.org.clone(),
            page_size: 2,
            order_by: "create_time desc".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.administrators.len(), 2);
    assert_eq!(page.total_size, 3);
    assert_eq!(page.administrators[0].name, second.name, "newest first");
    let rest = owner
        .client
        .admin()
        .list_administrators(ListAdministratorsRequest {
            parent: owner.org.clone(),
            page_size: 2,
            order_by: "create_time desc".into(),
            page_token: page.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.administrators.len(), 1);
    assert_eq!(rest.administrators[0].name, owner.admin);
    assert!(rest.next_page_token.is_empty());
    let err = owner
        .client
        .admin()
        .list_administrators(ListAdministratorsRequest {
            parent: owner.org.clone(),
            page_size: 2,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "a token is bound to its order");

    // Delete several at once after a validate_only preview.
    let preview =
        delete(&owner.client, &owner.org, &[&runner.name, &second.name], true).await.unwrap();
    let mut previewed: Vec<_> = preview.iter().map(|a| a.name.clone()).collect();
    previewed.sort();
    let mut expected = vec![runner.name.clone(), second.name.clone()];
    expected.sort();
    assert_eq!(previewed, expected);
    assert_eq!(list(&owner.client, &owner.org, "").await.len(), 3, "validate_only deletes nothing");
    let deleted =
        delete(&owner.client, &owner.org, &[&runner.name, &second.name, &runner.name], false)
            .await
            .unwrap();
    assert_eq!(deleted.len(), 2, "duplicates are ignored");
    let left = list(&owner.client, &owner.org, "").await;
    assert_eq!(
        left.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        vec![owner.admin.as_str()]
    );
    assert_eq!(get(&owner.client, &second.name).await.unwrap_err().code(), Code::NotFound);
    // Missing names fail the whole batch.
    let missing = format!("{}/administrators/does-not-exist", owner.org);
    assert_eq!(
        delete(&owner.client, &owner.org, &[&missing], false).await.unwrap_err().code(),
        Code::NotFound
    );
    // A deleted administrator's still-valid token can no longer act.
    let err = create(&second_client, &owner.org, &email(), Role::CommandRunner).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
});

backend_test!(safeguards_refuse_self_and_last, |stack| async move {
    let owner = stack.owner().await;
    let other = stack.member(&owner, Role::Administrator, false).await;

    // Self-delete alone: refused, the rule names the caller.
    let err = delete(&owner.client, &owner.org, &[&owner.admin], false).await.unwrap_err();
    let found = violations(&err);
    assert!(found.contains(&("SELF_DELETE".into(), owner.admin.clone())), "{found:?}");
    // ... and inside a batch: refused whole, every rule listed.
    let err =
        delete(&owner.client, &owner.org, &[&other.name, &owner.admin], false).await.unwrap_err();
    let found = violations(&err);
    assert!(found.contains(&("SELF_DELETE".into(), owner.admin.clone())), "{found:?}");
    assert!(found.contains(&("LAST_ADMINISTRATOR".into(), owner.org.clone())), "{found:?}");
    assert!(found.contains(&("LAST_BILLING_ADMINISTRATOR".into(), owner.org.clone())), "{found:?}");
    assert!(get(&owner.client, &other.name).await.is_ok(), "nothing of a refused batch is deleted");
    // validate_only answers the same refusal.
    let err = delete(&owner.client, &owner.org, &[&owner.admin], true).await.unwrap_err();
    assert!(violations(&err).iter().any(|(t, _)| t == "SELF_DELETE"));

    // Last billing administrator: delete, or remove billing.
    let err = delete(&other.client, &owner.org, &[&owner.admin], false).await.unwrap_err();
    assert_eq!(
        violations(&err),
        vec![("LAST_BILLING_ADMINISTRATOR".to_string(), owner.org.clone())]
    );
    let err = update(
        &other.client,
        Administrator { name: owner.admin.clone(), billing: false, ..Default::default() },
        &["billing"],
    )
    .await
    .unwrap_err();
    assert_eq!(
        violations(&err),
        vec![("LAST_BILLING_ADMINISTRATOR".to_string(), owner.org.clone())]
    );
    // An invited billing administrator does not count.
    let invited = create(&owner.client, &owner.org, &email(), Role::Administrator).await.unwrap();
    update(
        &owner.client,
        Administrator { name: invited.name.clone(), billing: true, ..Default::default() },
        &["billing"],
    )
    .await
    .unwrap();
    let err = update(
        &other.client,
        Administrator { name: owner.admin.clone(), billing: false, ..Default::default() },
        &["billing"],
    )
    .await
    .unwrap_err();
    assert_eq!(violations(&err)[0].0, "LAST_BILLING_ADMINISTRATOR");

    // Last Administrator: demote.
    set_role(&owner.client, &other.name, Role::CommandRunner).await.unwrap();
    let err = set_role(&owner.client, &owner.admin, Role::CommandRunner).await.unwrap_err();
    assert_eq!(violations(&err), vec![("LAST_ADMINISTRATOR".to_string(), owner.org.clone())]);
    assert_eq!(active_administrators(&owner.client, &owner.org).await, 1);
    // The demoted administrator's token still says Administrator, but the service re-checks.
    let err = create(&other.client, &owner.org, &email(), Role::CommandRunner).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = delete(&other.client, &owner.org, &[&invited.name], false).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Once a second billing Administrator exists, the owner may step down.
    set_role(&owner.client, &other.name, Role::Administrator).await.unwrap();
    update(
        &owner.client,
        Administrator { name: other.name.clone(), billing: true, ..Default::default() },
        &["billing"],
    )
    .await
    .unwrap();
    update(
        &other.client,
        Administrator {
            name: owner.admin.clone(),
            billing: false,
            role: Role::CommandRunner as i32,
            ..Default::default()
        },
        &["billing", "role"],
    )
    .await
    .unwrap();
    delete(&other.client, &owner.org, &[&owner.admin], false).await.unwrap();
    assert_eq!(active_administrators(&other.client, &owner.org).await, 1);
});

backend_test!(emails_are_validated_and_unique, |stack| async move {
    let owner = stack.owner().await;
    let email = format!("Dup-{}@Example.com", uuid::Uuid::new_v4().simple());
    create(&owner.client, &owner.org, &email, Role::CommandRunner).await.unwrap();
    for variant in [email.to_uppercase(), email.to_lowercase(), email.clone()] {
        let err =
            create(&owner.client, &owner.org, &variant, Role::Administrator).await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{variant}");
    }
    let err = create(&owner.client, &owner.org, &owner.email.to_uppercase(), Role::Administrator)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let long = format!("{}@example.com", "a".repeat(250));
    for bad in
        ["", "no-at-sign", "a@localhost", "two words@example.com", "a@@example.com", long.as_str()]
    {
        let err = create(&owner.client, &owner.org, bad, Role::Administrator).await.unwrap_err();
        assert_eq!(bad_fields(&err), vec!["administrator.email"], "{bad}");
    }
    let err =
        create(&owner.client, &owner.org, "fine@example.com", Role::Unspecified).await.unwrap_err();
    assert_eq!(bad_fields(&err), vec!["administrator.role"]);
    assert_eq!(list(&owner.client, &owner.org, "").await.len(), 2);
});

backend_test!(roles_are_also_named, |stack| async move {
    let owner = stack.owner().await;
    let by_name = |email: &str, role: Role, role_name: &str| {
        let request = CreateAdministratorRequest {
            parent: owner.org.clone(),
            administrator: Some(Administrator {
                email: email.into(),
                role: role as i32,
                role_name: role_name.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        };
        let mut admin = owner.client.admin();
        async move { admin.create_administrator(request).await.map(|r| r.into_inner()) }
    };
    // The name alone assigns the role; answers carry both forms.
    let runner = by_name("named@example.com", Role::Unspecified, "roles/command-runner")
        .await
        .unwrap()
        .administrator
        .unwrap();
    assert_eq!(
        (runner.role, runner.role_name.as_str()),
        (Role::CommandRunner as i32, "roles/command-runner")
    );
    let listed = get(&owner.client, &owner.admin).await.unwrap();
    assert_eq!(listed.role_name, "roles/administrator");
    // Both forms must agree; an unknown name is refused.
    let clash = by_name("clash@example.com", Role::Administrator, "roles/command-runner")
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&clash), vec!["administrator.role_name"]);
    let unknown =
        by_name("unknown@example.com", Role::Unspecified, "roles/auditor").await.unwrap_err();
    assert_eq!(bad_fields(&unknown), vec!["administrator.role_name"]);
    // An update may name the role too, with the mask path role_name.
    let promoted = owner
        .client
        .admin()
        .update_administrator(UpdateAdministratorRequest {
            administrator: Some(Administrator {
                name: runner.name.clone(),
                role_name: "roles/administrator".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["role_name".into()] }),
        })
        .await
        .unwrap()
        .into_inner()
        .administrator
        .unwrap();
    assert_eq!(
        (promoted.role, promoted.role_name.as_str()),
        (Role::Administrator as i32, "roles/administrator")
    );
    assert_eq!(list(&owner.client, &owner.org, "").await.len(), 2);
});

backend_test!(command_runner_is_refused_admin_rpcs, |stack| async move {
    let owner = stack.owner().await;
    let runner = stack.member(&owner, Role::CommandRunner, false).await;
    let c = &runner.client;
    let org = owner.org.clone();
    let denied = |r: Result<(), Status>| {
        assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
    };
    denied(create(c, &org, &email(), Role::CommandRunner).await.map(|_| ()));
    denied(get(c, &owner.admin).await.map(|_| ()));
    denied(
        c.admin()
            .list_administrators(ListAdministratorsRequest {
                parent: org.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
    );
    denied(set_role(c, &runner.name, Role::Administrator).await.map(|_| ()));
    denied(delete(c, &org, &[&owner.admin], false).await.map(|_| ()));
    denied(
        c.admin()
            .resend_invite(ResendInviteRequest { name: owner.admin.clone() })
            .await
            .map(|_| ()),
    );
    denied(
        c.admin()
            .reset_administrator_mfa(ResetAdministratorMfaRequest { name: owner.admin.clone() })
            .await
            .map(|_| ()),
    );
    denied(
        c.audit()
            .list_audit_events(ListAuditEventsRequest { parent: org.clone(), ..Default::default() })
            .await
            .map(|_| ()),
    );
    denied(
        c.billing()
            .get_payment_card(GetPaymentCardRequest { name: format!("{org}/paymentCard") })
            .await
            .map(|_| ()),
    );
    // Its own profile is allowed.
    let profile =
        c.admin().get_profile(GetProfileRequest {}).await.unwrap().into_inner().profile.unwrap();
    assert_eq!(profile.administrator.unwrap().role, Role::CommandRunner as i32);
    c.admin()
        .update_profile(UpdateProfileRequest { whats_new: true, update_mask: mask(&["whats_new"]) })
        .await
        .unwrap();
    let org_view = c
        .organizations()
        .get_organization(GetOrganizationRequest { name: org.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(org_view.organization.unwrap().name, org);
    // Nothing changed.
    assert_eq!(get(&owner.client, &runner.name).await.unwrap().role, Role::CommandRunner as i32);
    assert_eq!(list(&owner.client, &org, "").await.len(), 2);
});

backend_test!(other_organization_is_refused, |stack| async move {
    let a = stack.owner().await;
    let b = stack.owner().await;
    let b_member = create(&b.client, &b.org, &email(), Role::CommandRunner).await.unwrap();
    let denied = |r: Result<(), Status>| {
        assert_eq!(r.unwrap_err().code(), Code::PermissionDenied);
    };
    denied(create(&a.client, &b.org, &email(), Role::Administrator).await.map(|_| ()));
    denied(get(&a.client, &b_member.name).await.map(|_| ()));
    denied(get(&a.client, &format!("{}/administrators/nonexistent", b.org)).await.map(|_| ()));
    denied(
        a.client
            .admin()
            .list_administrators(ListAdministratorsRequest {
                parent: b.org.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
    );
    denied(set_role(&a.client, &b_member.name, Role::Administrator).await.map(|_| ()));
    denied(delete(&a.client, &b.org, &[&b_member.name], false).await.map(|_| ()));
    denied(delete(&a.client, &a.org, &[&b_member.name], true).await.map(|_| ()));
    denied(
        a.client
            .admin()
            .resend_invite(ResendInviteRequest { name: b_member.name.clone() })
            .await
            .map(|_| ()),
    );
    denied(
        a.client
            .admin()
            .reset_administrator_mfa(ResetAdministratorMfaRequest { name: b.admin.clone() })
            .await
            .map(|_| ()),
    );
    denied(
        a.client
            .organizations()
            .get_organization(GetOrganizationRequest { name: b.org.clone() })
            .await
            .map(|_| ()),
    );
    denied(
        a.client
            .audit()
            .list_audit_events(ListAuditEventsRequest {
                parent: b.org.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
    );
    denied(
        a.client
            .billing()
            .get_payment_card(GetPaymentCardRequest { name: format!("{}/paymentCard", b.org) })
            .await
            .map(|_| ()),
    );
    // B is untouched, and A's attempts are in A's audit log, not B's.
    let after = get(&b.client, &b_member.name).await.unwrap();
    assert_eq!(after.role, Role::CommandRunner as i32);
    let a_log = a
        .client
        .audit()
        .list_audit_events(ListAuditEventsRequest {
            parent: a.org.clone(),
            filter: "result = RESULT_DENIED".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(a_log
        .audit_events
        .iter()
        .any(|e| e.target == b.org && e.action.ends_with("/CreateAdministrator")));
    let b_log = b
        .client
        .audit()
        .list_audit_events(ListAuditEventsRequest {
            parent: b.org.clone(),
            filter: format!("actor = \"{}\"", a.admin),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(b_log.audit_events.is_empty());
    // Platform-operator RPCs are not served on the public listener at all.
    let refused = a
        .client
        .organizations()
        .list_organizations(ListOrganizationsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    assert_eq!(reason(&refused), "INTERNAL_LISTENER_ONLY");
    let mut orgs = OrganizationServiceClient::new(stack.internal().await);
    let all =
        orgs.list_organizations(ListOrganizationsRequest::default()).await.unwrap().into_inner();
    assert!(all.organizations.len() >= 2);
    let page = orgs
        .list_organizations(ListOrganizationsRequest { page_size: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.organizations.len(), 1);
    assert!(!page.next_page_token.is_empty());
});

/// `text` with every resource name (`organizations/...` up to a delimiter) removed.
fn without_resource_names(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("organizations/") {
        out.push_str(&rest[..at]);
        let name = &rest[at..];
        let end = name.find(['|', '"', ' ', ',', '}']).unwrap_or(name.len());
        rest = &name[end..];
    }
    out.push_str(rest);
    out
}

backend_test!(billing_card_is_stored_redacted, |stack| async move {
    const NUMBER: &str = "4242 4242 4242 4242";
    const DIGITS: &str = "4242424242424242";
    const CVC: &str = "913";
    let owner = stack.owner().await;
    let card_name = format!("{}/paymentCard", owner.org);
    let billing = owner.client.billing();
    let err = billing
        .clone()
        .get_payment_card(GetPaymentCardRequest { name: card_name.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let year = stack.clock.now().format("%Y").to_string().parse::<i32>().unwrap();
    let card = |number: &str, cvc: &str, exp_month: i32, exp_year: i32| PaymentCard {
        name: card_name.clone(),
        card_number: number.into(),
        cvc: cvc.into(),
        exp_month,
        exp_year,
        cardholder_name: "Ada Lovelace".into(),
        ..Default::default()
    };
    let set = |c: PaymentCard, paths: &[&str]| {
        let mut billing = owner.client.billing();
        let update_mask = if paths.is_empty() { None } else { mask(paths) };
        async move {
            billing
                .update_payment_card(UpdatePaymentCardRequest {
                    payment_card: Some(c),
                    update_mask,
                })
                .await
        }
    };
    // Refusals name the field and never echo the number.
    let err = set(card("4242 4242 4242 4241", CVC, 12, year + 2), &[]).await.unwrap_err();
    assert_eq!(bad_fields(&err), vec!["payment_card.card_number"]);
    assert!(!err.message().contains("4241"));
    let err = set(card("1234 5678 9012 3452", CVC, 12, year + 2), &[]).await.unwrap_err();
    assert_eq!(bad_fields(&err), vec!["payment_card.card_number"]);
    let err = set(card(NUMBER, "12", 12, year + 2), &[]).await.unwrap_err();
    assert_eq!(bad_fields(&err), vec!["payment_card.cvc"]);
    let err = set(card(NUMBER, CVC, 1, year - 1), &[]).await.unwrap_err();
    assert_eq!(bad_fields(&err), vec!["payment_card.exp_year"]);
    let err = set(card(NUMBER, CVC, 13, year + 1), &[]).await.unwrap_err();
    assert_eq!(bad_fields(&err), vec!["payment_card.exp_month"]);
    let err = set(card("", "", 6, year + 1), &["exp_month", "exp_year"]).await.unwrap_err();
    assert_eq!(bad_fields(&err), vec!["payment_card.card_number"], "the first card needs a number");

    let stored =
        set(card(NUMBER, CVC, 12, year + 2), &[]).await.unwrap().into_inner().payment_card.unwrap();
    assert_eq!(stored.brand, CardBrand::Visa as i32);
    assert_eq!(stored.last4, "4242");
    assert_eq!((stored.exp_month, stored.exp_year), (12, year + 2));
    assert!(stored.card_number.is_empty() && stored.cvc.is_empty());
    assert!(!stored.expired && !stored.expires_soon);
    assert_eq!(stored.updated_by, owner.admin);
    let read = billing
        .clone()
        .get_payment_card(GetPaymentCardRequest { name: card_name.clone() })
        .await
        .unwrap()
        .into_inner()
        .payment_card
        .unwrap();
    assert_eq!(read, stored);
    // Expiry only, with the etag; a stale etag is ABORTED.
    let mut change = card("", "", 6, year + 3);
    change.etag = read.etag.clone();
    let changed = set(change.clone(), &["exp_month", "exp_year"])
        .await
        .unwrap()
        .into_inner()
        .payment_card
        .unwrap();
    assert_eq!(
        (changed.exp_month, changed.exp_year, changed.last4.as_str()),
        (6, year + 3, "4242")
    );
    assert_eq!(set(change, &["exp_month", "exp_year"]).await.unwrap_err().code(), Code::Aborted);
    // An American Express card needs a 4-digit CVC.
    let err = set(card("378282246310005", "123", 12, year + 2), &[]).await.unwrap_err();
    assert_eq!(bad_fields(&err), vec!["payment_card.cvc"]);
    // Billing access is required (either role), and re-checked against the database.
    let no_billing = stack.member(&owner, Role::Administrator, false).await;
    let err = no_billing
        .client
        .billing()
        .get_payment_card(GetPaymentCardRequest { name: card_name.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let runner = stack.member(&owner, Role::CommandRunner, true).await;
    runner
        .client
        .billing()
        .get_payment_card(GetPaymentCardRequest { name: card_name.clone() })
        .await
        .unwrap();
    update(
        &owner.client,
        Administrator { name: runner.name.clone(), billing: false, ..Default::default() },
        &["billing"],
    )
    .await
    .unwrap();
    let err = runner
        .client
        .billing()
        .get_payment_card(GetPaymentCardRequest { name: card_name.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "a stale billing claim is not enough");

    // Back to the Visa; then let time pass: expires soon, then expired.
    let now = stack.clock.now();
    let soon = now + chrono::Duration::days(45);
    let (m, y) = (
        soon.format("%m").to_string().parse::<i32>().unwrap(),
        soon.format("%Y").to_string().parse::<i32>().unwrap(),
    );
    let stored =
        set(card(NUMBER, CVC, m, y), &[]).await.unwrap().into_inner().payment_card.unwrap();
    assert!(!stored.expires_soon && !stored.expired);
    let end = chrono::NaiveDate::from_ymd_opt(
        if m == 12 { y + 1 } else { y },
        if m == 12 { 1 } else { m as u32 + 1 },
        1,
    )
    .unwrap()
    .and_hms_opt(0, 0, 0)
    .unwrap()
    .and_utc();
    let to_soon = (end - now) - chrono::Duration::days(10);
    stack.clock.advance(to_soon.to_std().unwrap());
    let client = stack
        .client()
        .await
        .with_token(&stack.sign_in(&owner.email, PASSWORD).await.access_token)
        .unwrap();
    let read = client
        .billing()
        .get_payment_card(GetPaymentCardRequest { name: card_name.clone() })
        .await
        .unwrap()
        .into_inner()
        .payment_card
        .unwrap();
    assert!(read.expires_soon && !read.expired, "{read:?}");
    stack.clock.advance(Duration::from_secs(11 * 24 * 3600));
    let client = stack
        .client()
        .await
        .with_token(&stack.sign_in(&owner.email, PASSWORD).await.access_token)
        .unwrap();
    let read = client
        .billing()
        .get_payment_card(GetPaymentCardRequest { name: card_name.clone() })
        .await
        .unwrap()
        .into_inner()
        .payment_card
        .unwrap();
    assert!(read.expired && !read.expires_soon, "{read:?}");

    // The number and the CVC are nowhere in the database files (SQLite) or the tables.
    if let Some(dir) = stack.sqlite_dir() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                for needle in [DIGITS, NUMBER] {
                    assert!(
                        !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                        "{needle} found in {}",
                        path.display()
                    );
                }
            }
        }
    }
    let url = match stack.backend {
        Backend::Sqlite => {
            steward_server::database_url(stack.config(), ServiceKind::Admin).unwrap()
        }
        Backend::Postgres => stack.config().database.url.clone(),
    };
    let db = sea_orm::Database::connect(&url).await.unwrap();
    use sea_orm::ConnectionTrait;
    for (table, columns) in [
        (
            "admin_payment_cards",
            "brand || '|' || last4 || '|' || cardholder_name || '|' || updated_by",
        ),
        ("admin_audit_events", "actor || '|' || action || '|' || target || '|' || reason"),
        ("admin_outbox", "payload"),
    ] {
        let sql = format!("SELECT {columns} AS t FROM {table}");
        let rows = db
            .query_all(sea_orm::Statement::from_string(db.get_database_backend(), sql))
            .await
            .unwrap();
        for row in rows {
            let text: String = row.try_get("", "t").unwrap();
            // Resource names carry random hex ids, in which a 3-digit CVC can appear by chance.
            let text = without_resource_names(&text);
            assert!(
                !text.contains(DIGITS) && !text.contains(NUMBER) && !text.contains(CVC),
                "{table}: {text}"
            );
        }
    }
});

backend_test!(audit_log_lists_and_filters, |stack| async move {
    let owner = stack.owner().await;
    let since = stack.clock.now() - chrono::Duration::seconds(1);
    let created = create(&owner.client, &owner.org, &email(), Role::CommandRunner).await.unwrap();
    delete(&owner.client, &owner.org, &[&owner.admin], false).await.unwrap_err();
    let runner = stack.member(&owner, Role::CommandRunner, false).await;
    // A call refused by the role table is recorded too (through RecordAuditEvents).
    create(&runner.client, &owner.org, &email(), Role::Administrator).await.unwrap_err();

    let audit = |filter: String, page_size: i32, page_token: String| {
        let mut client = owner.client.audit();
        let parent = owner.org.clone();
        async move {
            client
                .list_audit_events(ListAuditEventsRequest { parent, page_size, page_token, filter })
                .await
        }
    };
    let all = audit(String::new(), 0, String::new()).await.unwrap().into_inner().audit_events;
    assert!(all.len() >= 4, "{all:?}");
    for pair in all.windows(2) {
        let (a, b) = (pair[0].create_time.unwrap(), pair[1].create_time.unwrap());
        assert!((a.seconds, a.nanos) >= (b.seconds, b.nanos), "newest first");
    }
    let creates = audit(
        format!("action = \"/steward.admin.v1.AdminService/CreateAdministrator\" AND actor = \"{}\" AND result = RESULT_ALLOWED", owner.admin),
        0,
        String::new(),
    )
    .await
    .unwrap()
    .into_inner()
    .audit_events;
    let event = creates.iter().find(|e| e.target == created.name).expect("create recorded");
    assert_eq!(event.status_code, 0);
    assert!(!event.request_id.is_empty());
    assert!(event.client_address.starts_with("127.0.0.1:"), "{}", event.client_address);

    let denied = audit("result = RESULT_DENIED".into(), 0, String::new())
        .await
        .unwrap()
        .into_inner()
        .audit_events;
    let refusal = denied
        .iter()
        .find(|e| e.actor == owner.admin && e.action.ends_with("/BatchDeleteAdministrators"))
        .expect("self-delete recorded");
    assert_eq!(refusal.status_code, Code::FailedPrecondition as i32);
    assert!(refusal.reason.contains("SELF_DELETE"), "{}", refusal.reason);
    // The layer's denial is delivered asynchronously.
    let mut found = false;
    for _ in 0..100 {
        let events = audit(
            format!("actor = \"{}\" AND result = RESULT_DENIED", runner.name),
            0,
            String::new(),
        )
        .await
        .unwrap()
        .into_inner()
        .audit_events;
        if events.iter().any(|e| {
            e.action.ends_with("/CreateAdministrator")
                && e.status_code == Code::PermissionDenied as i32
        }) {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found, "the Command Runner's refused call is in the log");

    // Time range.
    let window = audit(format!("create_time >= \"{}\"", since.to_rfc3339()), 0, String::new())
        .await
        .unwrap()
        .into_inner()
        .audit_events;
    assert!(window.iter().any(|e| e.target == created.name));
    let future = (stack.clock.now() + chrono::Duration::days(1)).to_rfc3339();
    assert!(audit(format!("create_time >= \"{future}\""), 0, String::new())
        .await
        .unwrap()
        .into_inner()
        .audit_events
        .is_empty());
    assert_eq!(
        audit(format!("create_time < \"{}\"", since.to_rfc3339()), 0, String::new())
            .await
            .unwrap()
            .into_inner()
            .audit_events
            .iter()
            .filter(|e| e.target == created.name)
            .count(),
        0
    );

    // Pagination.
    let first = audit(String::new(), 2, String::new()).await.unwrap().into_inner();
    assert_eq!(first.audit_events.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = audit(String::new(), 2, first.next_page_token.clone()).await.unwrap().into_inner();
    assert_eq!(second.audit_events.len(), 2);
    assert!(second
        .audit_events
        .iter()
        .all(|e| first.audit_events.iter().all(|f| f.name != e.name)));
    assert_eq!(
        audit("result = RESULT_DENIED".into(), 2, first.next_page_token).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    for bad in [
        "actor = unquoted",
        "who = \"x\"",
        "create_time > \"2024-01-01T00:00:00Z\"",
        "result = RESULT_SOMETIMES",
    ] {
        let err = audit(bad.into(), 0, String::new()).await.unwrap_err();
        assert_eq!(bad_fields(&err), vec!["filter"], "{bad}");
    }

    // RecordAuditEvents is idempotent by name.
    let mut internal = AdminInternalServiceClient::new(stack.internal().await);
    let event = AuditEvent {
        name: format!("{}/auditEvents/{}", owner.org, uuid::Uuid::new_v4()),
        actor: runner.name.clone(),
        action: "/steward.commands.v1.CommandService/RunCommand".into(),
        target: format!("{}/commands/c1", owner.org),
        result: audit_event::Result::Allowed as i32,
        create_time: Some(prost_types::Timestamp {
            seconds: stack.clock.now().timestamp(),
            nanos: 0,
        }),
        ..Default::default()
    };
    let first = internal
        .record_audit_events(RecordAuditEventsRequest { events: vec![event.clone()] })
        .await
        .unwrap()
        .into_inner();
    let again = internal
        .record_audit_events(RecordAuditEventsRequest { events: vec![event.clone()] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.recorded_count, again.recorded_count), (1, 0));
    let runs = audit(format!("target = \"{}\"", event.target), 0, String::new())
        .await
        .unwrap()
        .into_inner()
        .audit_events;
    assert_eq!(runs.len(), 1);
    let err = internal
        .record_audit_events(RecordAuditEventsRequest {
            events: vec![AuditEvent { name: "bogus".into(), ..event }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
});

// Two replicas on one database; the last two Administrators race to delete or demote each
// other, many rounds, released together by a barrier. Exactly one of each pair wins and an
// activated Administrator always remains.
backend_test!(racing_replicas_keep_an_administrator, |stack| async move {
    let mut stack = stack;
    let replica = stack.add_replica().await;
    let owner = stack.owner().await;

    // Demotion rounds: the winner promotes the loser back for the next round.
    let other = stack.member(&owner, Role::Administrator, true).await;
    let a = (owner.admin.clone(), owner.client.clone());
    let b = (
        other.name.clone(),
        stack.client_at(&replica).await.with_token(&other.tokens.access_token).unwrap(),
    );
    for round in 0..12 {
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let (ra, rb) = tokio::join!(
            {
                let barrier = barrier.clone();
                let (client, target) = (a.1.clone(), b.0.clone());
                async move {
                    barrier.wait().await;
                    set_role(&client, &target, Role::CommandRunner).await
                }
            },
            {
                let barrier = barrier.clone();
                let (client, target) = (b.1.clone(), a.0.clone());
                async move {
                    barrier.wait().await;
                    set_role(&client, &target, Role::CommandRunner).await
                }
            }
        );
        assert!(
            ra.is_ok() != rb.is_ok(),
            "round {round}: exactly one demotion wins: {ra:?} / {rb:?}"
        );
        let loser = ra.as_ref().err().or(rb.as_ref().err()).unwrap();
        assert!(
            matches!(loser.code(), Code::PermissionDenied | Code::FailedPrecondition),
            "{loser:?}"
        );
        // Read as the winner: the loser's token no longer reads the administrator list.
        let (winner, demoted) = if ra.is_ok() { (&a, &b) } else { (&b, &a) };
        assert_eq!(active_administrators(&winner.1, &owner.org).await, 1, "round {round}");
        set_role(&winner.1, &demoted.0, Role::Administrator).await.unwrap();
    }

    // Deletion rounds: a fresh pair each time (a deleted administrator cannot come back).
    let mut survivor = (owner.admin.clone(), owner.client.clone());
    let mut rival = (other.name.clone(), b.1.clone());
    for round in 0..4 {
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let (ra, rb) = tokio::join!(
            {
                let barrier = barrier.clone();
                let (client, target) = (survivor.1.clone(), rival.0.clone());
                let org = owner.org.clone();
                async move {
                    barrier.wait().await;
                    delete(&client, &org, &[&target], false).await
                }
            },
            {
                let barrier = barrier.clone();
                let (client, target) = (rival.1.clone(), survivor.0.clone());
                let org = owner.org.clone();
                async move {
                    barrier.wait().await;
                    delete(&client, &org, &[&target], false).await
                }
            }
        );
        assert!(
            ra.is_ok() != rb.is_ok(),
            "round {round}: exactly one delete wins: {ra:?} / {rb:?}"
        );
        let winner = if ra.is_ok() { survivor.clone() } else { rival.clone() };
        assert_eq!(active_administrators(&winner.1, &owner.org).await, 1, "round {round}");
        // The winner invites the next rival (signed in on the replica).
        let owner_view = Owner {
            org: owner.org.clone(),
            admin: winner.0.clone(),
            email: String::new(),
            client: winner.1.clone(),
            tokens: owner.tokens.clone(),
        };
        let next = stack.member(&owner_view, Role::Administrator, true).await;
        survivor = winner;
        rival = (
            next.name.clone(),
            stack.client_at(&replica).await.with_token(&next.tokens.access_token).unwrap(),
        );
    }
});

/// With the services split, the auth service is down while an administrator is created: the
/// create succeeds, and the invite is delivered once auth is back.
async fn invite_survives_auth_outage(backend: Backend) {
    let mut stack = Stack::start_split(backend).await;
    let owner = stack.owner().await;
    // The admin server fetches the token keys once, while auth is still up.
    owner.client.admin().get_profile(GetProfileRequest {}).await.unwrap();
    stack.stop_auth().await;
    let email = email();
    let created = create(&owner.client, &owner.org, &email, Role::Administrator).await.unwrap();
    assert_eq!(created.state, administrator::State::Invited as i32);
    // The relay has tried to deliver the invite and failed (observable in the outbox row, kept
    // for a retry); no mail went out.
    let url = match backend {
        Backend::Sqlite => {
            steward_server::database_url(stack.config(), ServiceKind::Admin).unwrap()
        }
        Backend::Postgres => stack.config().database.url.clone(),
    };
    let db = sea_orm::Database::connect(&url).await.unwrap();
    let attempts = || {
        let db = db.clone();
        let email = email.clone();
        async move {
            use sea_orm::ConnectionTrait;
            let sql =
                "SELECT attempts, payload FROM admin_outbox WHERE topic = 'auth.issue_invite'";
            let rows = db
                .query_all(sea_orm::Statement::from_string(db.get_database_backend(), sql))
                .await
                .unwrap();
            rows.iter()
                .filter(|row| {
                    let payload: String = row.try_get("", "payload").unwrap();
                    let payload: serde_json::Value = serde_json::from_str(&payload).unwrap();
                    payload["email"] == email.as_str()
                })
                .map(|row| row.try_get::<i32>("", "attempts").unwrap())
                .max()
        }
    };
    let mut tried = None;
    for _ in 0..300 {
        tried = attempts().await;
        if tried.is_some_and(|n| n >= 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(tried.is_some_and(|n| n >= 1), "the relay never tried: {tried:?}");
    assert!(steward_server::newest_token_for(&stack.mail_dir(), &email).is_none());
    stack.start_auth().await;
    let tokens = stack.accept_and_sign_in(&email).await;
    assert!(!tokens.access_token.is_empty());
    let mut internal = AdminInternalServiceClient::new(stack.internal().await);
    let looked = internal
        .lookup_administrator(LookupAdministratorRequest { name: created.name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(looked.administrator.unwrap().state, administrator::State::Active as i32);
    assert_eq!(looked.organization_display_name, "Acme");
    // Delivered once: the row is gone and exactly one mail was written.
    let mut left = attempts().await;
    for _ in 0..100 {
        if left.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = attempts().await;
    }
    assert_eq!(left, None, "the delivered invite left the outbox");
    let mails = std::fs::read_dir(stack.mail_dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(&format!("To: {email}")))
        })
        .count();
    assert_eq!(mails, 1);
}

mod auth_outage {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        invite_survives_auth_outage(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        if crate::harness::postgres_available() {
            invite_survives_auth_outage(Backend::Postgres).await;
        }
    }
}

// ListAdministrators' `total_size` is counted once per organization revision and reused while
// nothing changed; every change, made on either of two replicas, is counted on the next page
// asked of the other, with or without a filter.
backend_test!(list_totals_follow_changes_made_on_another_replica, |stack| async move {
    let mut stack: Stack = stack;
    let replica = stack.add_replica().await;
    let owner = stack.owner().await;
    let other = stack.client_at(&replica).await.with_token(&owner.tokens.access_token).unwrap();
    let total = |client: Steward, filter: &'static str| {
        let org = owner.org.clone();
        async move {
            let request = ListAdministratorsRequest {
                parent: org,
                filter: filter.into(),
                page_size: 1,
                ..Default::default()
            };
            client.admin().list_administrators(request).await.unwrap().into_inner().total_size
        }
    };
    let runners = "role = ROLE_COMMAND_RUNNER";
    let here = owner.client.clone();
    // Counted (and remembered) on the first replica, twice each.
    for _ in 0..2 {
        assert_eq!(total(here.clone(), "").await, 1);
        assert_eq!(total(here.clone(), runners).await, 0);
    }
    // Created on the other replica: counted here at once.
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(create(&other, &owner.org, &email(), Role::CommandRunner).await.unwrap());
    }
    // Counting is what is saved: the first page after the change counts, the next ones read
    // the revision only, one statement fewer (the fewest of five, as background work of the
    // replicas may add statements to any one measure).
    let statements = |stack: &Stack| stack.statements(ServiceKind::Admin);
    let before = statements(&stack);
    assert_eq!(total(here.clone(), "").await, 4);
    let counted = statements(&stack) - before;
    let mut remembered = u64::MAX;
    for _ in 0..5 {
        let before = statements(&stack);
        assert_eq!(total(here.clone(), "").await, 4);
        remembered = remembered.min(statements(&stack) - before);
    }
    assert!(remembered < counted, "{remembered} statements, counted with {counted}");
    assert_eq!(total(here.clone(), runners).await, 3);
    // A role change moves one out of the filter; a deletion out of both.
    set_role(&other, &created[0].name, Role::ReadOnly).await.unwrap();
    assert_eq!(total(here.clone(), runners).await, 2);
    assert_eq!(total(here.clone(), "").await, 4);
    delete(&other, &owner.org, &[created[1].name.as_str()], false).await.unwrap();
    assert_eq!(total(here.clone(), "").await, 3);
    assert_eq!(total(here.clone(), runners).await, 1);
    // And the other way round.
    delete(&here, &owner.org, &[created[2].name.as_str()], false).await.unwrap();
    assert_eq!(total(other.clone(), runners).await, 0);
    assert_eq!(total(other.clone(), "").await, 2);
});
