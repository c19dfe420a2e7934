//! Service accounts: machine identities with a role, signing in with API keys. A CI job's
//! walk-through, key rotation and revocation, escalation, and the safeguards they never count
//! toward.

use steward_proto::admin::v1::{
    BatchDeleteAdministratorsRequest, CreateServiceAccountKeyRequest, CreateServiceAccountRequest,
    DeleteServiceAccountKeyRequest, DeleteServiceAccountRequest, GetProfileRequest,
    ListAdministratorsRequest, ListServiceAccountKeysRequest, Role, ServiceAccount,
    ServiceAccountKey,
};
use steward_proto::audit::v1::ListAuditEventsRequest;
use steward_proto::auth::v1::{ExchangeApiKeyRequest, SignOutRequest};
use steward_proto::client::Steward;
use steward_proto::commands::v1::{CreateCommandRequest, ListCommandsRequest};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::harness::{refused, Owner, Stack};

pub(crate) async fn create_account(
    client: &Steward,
    org: &str,
    role_name: &str,
    billing: bool,
) -> Result<ServiceAccount, Status> {
    let request = CreateServiceAccountRequest {
        parent: org.to_string(),
        service_account: Some(ServiceAccount {
            display_name: "ci".into(),
            role_name: role_name.into(),
            billing,
            ..Default::default()
        }),
    };
    Ok(client
        .service_accounts()
        .create_service_account(request)
        .await?
        .into_inner()
        .service_account
        .unwrap())
}

fn in_days(stack: &Stack, days: i64) -> prost_types::Timestamp {
    let at = stack.clock.now() + chrono::Duration::days(days);
    prost_types::Timestamp { seconds: at.timestamp(), nanos: 0 }
}

pub(crate) async fn create_key(
    stack: &Stack,
    client: &Steward,
    account: &str,
    days: i64,
) -> Result<(ServiceAccountKey, String), Status> {
    let request = CreateServiceAccountKeyRequest {
        parent: account.to_string(),
        key: Some(ServiceAccountKey {
            expire_time: Some(in_days(stack, days)),
            ..Default::default()
        }),
    };
    let answer = client.service_accounts().create_service_account_key(request).await?.into_inner();
    Ok((answer.key.unwrap(), answer.api_key))
}

/// A client signed in with `api_key`.
pub(crate) async fn with_key(stack: &Stack, api_key: &str) -> Result<Steward, Status> {
    let client = stack.client().await;
    client.sign_in_with_api_key(api_key).await?;
    Ok(client)
}

async fn list_commands(client: &Steward, owner: &Owner) -> Result<(), Status> {
    let request = ListCommandsRequest { parent: owner.org.clone(), ..Default::default() };
    client.commands().list_commands(request).await.map(|_| ())
}

backend_test!(a_ci_job_signs_in_with_a_key_and_loses_it_at_once, |stack| async move {
    let owner = stack.owner().await;
    let account = create_account(&owner.client, &owner.org, "roles/manager", false).await.unwrap();
    assert_eq!(
        (account.role, account.creator.as_str()),
        (Role::Manager as i32, owner.admin.as_str())
    );
    let (key, api_key) = create_key(&stack, &owner.client, &account.name, 30).await.unwrap();
    assert!(api_key.starts_with("stw_") && key.last_used_time.is_none());

    // The job works with its role's permissions, audited as itself.
    let ci = with_key(&stack, &api_key).await.unwrap();
    list_commands(&ci, &owner).await.unwrap();
    let create = CreateCommandRequest {
        parent: owner.org.clone(),
        command: Some(steward_proto::commands::v1::Command {
            display_name: "deploy".into(),
            script: "true".into(),
            interpreter: steward_proto::commands::v1::Interpreter::Sh as i32,
            timeout: Some(prost_types::Duration { seconds: 30, nanos: 0 }),
            ..Default::default()
        }),
        request_id: uuid::Uuid::new_v4().to_string(),
        command_id: String::new(),
    };
    ci.commands().create_command(create).await.unwrap();
    let list = ListAdministratorsRequest { parent: owner.org.clone(), ..Default::default() };
    refused(ci.admin().list_administrators(list).await, Code::PermissionDenied, "ROLE_REQUIRED");
    refused(
        ci.admin().get_profile(GetProfileRequest {}).await,
        Code::PermissionDenied,
        "PEOPLE_ONLY",
    );
    refused(ci.auth().sign_out(SignOutRequest {}).await, Code::PermissionDenied, "PEOPLE_ONLY");
    // Access checks explain an account's permissions like anyone's.
    use crate::commands::check_permission;
    use steward_proto::commands::v1::DecisionReason;
    let mine = check_permission(&ci, "", "commands.create", "").await.unwrap();
    assert_eq!((mine.allowed, mine.reason), (true, DecisionReason::RolePermission as i32));
    let asked = check_permission(&owner.client, &account.name, "administrators.delete", "");
    let asked = asked.await.unwrap();
    assert_eq!((asked.allowed, asked.reason), (false, DecisionReason::MissingPermission as i32));
    assert!(asked.message.contains("administrators.delete"), "{}", asked.message);
    let people = check_permission(&owner.client, &account.name, "profile.read", "").await.unwrap();
    assert!(!people.allowed, "{people:?}");
    let events = owner
        .client
        .audit()
        .list_audit_events(ListAuditEventsRequest {
            parent: owner.org.clone(),
            filter: format!("actor = \"{}\"", account.name),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!events.audit_events.is_empty(), "the job's command is audited as the account");
    let keys = owner
        .client
        .service_accounts()
        .list_service_account_keys(ListServiceAccountKeysRequest { parent: account.name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(keys.keys[0].last_used_time.is_some());

    // Rotation: a second key, no third; the old one deleted stops its tokens at once.
    let (second, second_key) = create_key(&stack, &owner.client, &account.name, 60).await.unwrap();
    let third = create_key(&stack, &owner.client, &account.name, 60).await;
    refused(third, Code::FailedPrecondition, "KEY_LIMIT");
    let delete = DeleteServiceAccountKeyRequest { name: key.name.clone() };
    owner.client.service_accounts().delete_service_account_key(delete).await.unwrap();
    refused(list_commands(&ci, &owner).await, Code::PermissionDenied, "CALLER_DELETED");
    let list = ListAdministratorsRequest { parent: owner.org.clone(), ..Default::default() };
    refused(ci.admin().list_administrators(list).await, Code::PermissionDenied, "ROLE_REQUIRED");
    let again = with_key(&stack, &api_key).await.unwrap_err();
    assert_eq!(again.code(), Code::Unauthenticated);
    let rotated = stack.client().await;
    let refresher = rotated.keep_signed_in_with_api_key(second_key.clone()).await.unwrap();
    list_commands(&rotated, &owner).await.unwrap();
    let refused_key = stack.client().await.keep_signed_in_with_api_key(api_key.clone()).await;
    assert_eq!(refused_key.unwrap_err().code(), Code::Unauthenticated);
    assert!(second.name.starts_with(&account.name));

    // Deleting the account ends every token of it.
    let delete = DeleteServiceAccountRequest { name: account.name.clone() };
    owner.client.service_accounts().delete_service_account(delete).await.unwrap();
    refused(list_commands(&rotated, &owner).await, Code::PermissionDenied, "CALLER_DELETED");
    assert_eq!(with_key(&stack, &second_key).await.unwrap_err().code(), Code::Unauthenticated);
    refresher.abort();
});

backend_test!(bad_keys_are_refused_alike_and_throttled, |stack| async move {
    let owner = stack.owner().await;
    let account =
        create_account(&owner.client, &owner.org, "roles/read-only", false).await.unwrap();
    let (_, api_key) = create_key(&stack, &owner.client, &account.name, 1).await.unwrap();
    let (prefix, _) = api_key.rsplit_once('_').unwrap();
    let client = stack.client().await;
    let exchange = |key: String| {
        let client = client.clone();
        async move { client.auth().exchange_api_key(ExchangeApiKeyRequest { api_key: key }).await }
    };
    for bad in [format!("{prefix}_wrong"), "stw_nope_nope".into(), "not a key".into()] {
        let status = exchange(bad).await.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unauthenticated, "invalid credentials")
        );
    }
    let empty = exchange(String::new()).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument, "{empty:?}");
    // Guesses at one key lock it, with RetryInfo.
    let mut throttled = None;
    for _ in 0..10 {
        match exchange(format!("{prefix}_guess")).await {
            Err(status) if status.code() == Code::ResourceExhausted => {
                throttled = Some(status);
                break;
            }
            Err(status) => assert_eq!(status.code(), Code::Unauthenticated),
            Ok(answer) => panic!("a wrong secret was accepted: {answer:?}"),
        }
    }
    let throttled = throttled.expect("guesses at a key are throttled");
    assert!(throttled.get_error_details().retry_info().is_some());
    // A token never outlives its key.
    let soon = stack.clock.now() + chrono::Duration::seconds(90);
    let request = CreateServiceAccountKeyRequest {
        parent: account.name.clone(),
        key: Some(ServiceAccountKey {
            expire_time: Some(prost_types::Timestamp { seconds: soon.timestamp(), nanos: 0 }),
            ..Default::default()
        }),
    };
    let short = owner.client.service_accounts().create_service_account_key(request).await;
    let short = short.unwrap().into_inner().api_key;
    let request = ExchangeApiKeyRequest { api_key: short };
    let tokens = client.auth().exchange_api_key(request).await.unwrap().into_inner().tokens;
    let expires = tokens.unwrap().access_token_expire_time.unwrap().seconds;
    assert!(expires <= soon.timestamp(), "the token outlives its key: {expires} > {soon}");
    // Keys live at most a year and need an expiry.
    let long = create_key(&stack, &owner.client, &account.name, 400).await.unwrap_err();
    assert_eq!(long.code(), Code::InvalidArgument);
    let request = CreateServiceAccountKeyRequest {
        parent: account.name.clone(),
        key: Some(Default::default()),
    };
    let missing = owner.client.service_accounts().create_service_account_key(request).await;
    assert_eq!(missing.unwrap_err().code(), Code::InvalidArgument);
    // An expired key is refused like an unknown one.
    stack.clock.advance(std::time::Duration::from_secs(2 * 86_400));
    let expired = with_key(&stack, &api_key).await.unwrap_err();
    assert!(
        matches!(expired.code(), Code::Unauthenticated | Code::ResourceExhausted),
        "{expired:?}"
    );
});

backend_test!(service_accounts_hand_out_nothing_they_do_not_hold, |stack| async move {
    let owner = stack.owner().await;
    // A Manager may not create accounts at all.
    let manager = stack.member(&owner, Role::Manager, false).await;
    let none = create_account(&manager.client, &owner.org, "roles/read-only", false).await;
    refused(none, Code::PermissionDenied, "ROLE_REQUIRED");
    // A key manager (a custom role) may not create a Manager account, nor a key for one.
    let keys_only = crate::custom_roles::create_role(
        &owner.client,
        &owner.org,
        "key-manager",
        &["service_accounts.create", "service_accounts.read", "service_accounts.keys"],
    )
    .await
    .unwrap();
    let (_, key_manager) = crate::custom_roles::holder(&stack, &owner, &keys_only.name).await;
    let wider = create_account(&key_manager, &owner.org, "roles/manager", false).await;
    refused(wider, Code::PermissionDenied, "ROLE_ESCALATION");
    let powerful = create_account(&owner.client, &owner.org, "roles/manager", false).await.unwrap();
    let mint = create_key(&stack, &key_manager, &powerful.name, 30).await;
    refused(mint, Code::PermissionDenied, "ROLE_ESCALATION");
    // Nor revoke its keys or delete it.
    let (powerful_key, _) = create_key(&stack, &owner.client, &powerful.name, 30).await.unwrap();
    let revoke = DeleteServiceAccountKeyRequest { name: powerful_key.name.clone() };
    let revoke = key_manager.service_accounts().delete_service_account_key(revoke).await;
    refused(revoke, Code::PermissionDenied, "TARGET_OUTRANKS_CALLER");
    // An account whose role issues credentials may not use it: a leaked key cannot mint its own
    // successor, a key of another account, or a fresh account.
    let minter = create_account(&owner.client, &owner.org, &keys_only.name, false).await.unwrap();
    let (_, minter_key) = create_key(&stack, &owner.client, &minter.name, 30).await.unwrap();
    let minter_client = with_key(&stack, &minter_key).await.unwrap();
    for account in [&minter.name, &powerful.name] {
        let mint = create_key(&stack, &minter_client, account, 30).await;
        refused(mint, Code::PermissionDenied, "PEOPLE_ONLY");
    }
    let spawn = create_account(&minter_client, &owner.org, "roles/read-only", false).await;
    refused(spawn, Code::PermissionDenied, "PEOPLE_ONLY");
    // A role an account holds is in use like one an administrator holds.
    let delete = steward_proto::admin::v1::DeleteRoleRequest {
        name: keys_only.name.clone(),
        etag: String::new(),
    };
    let in_use = owner.client.roles().delete_role(delete).await;
    refused(in_use, Code::FailedPrecondition, "ROLE_IN_USE");
    // Billing access only from a caller with billing access.
    let plain_admin = stack.member(&owner, Role::Administrator, false).await;
    let billing = create_account(&plain_admin.client, &owner.org, "roles/read-only", true).await;
    refused(billing, Code::PermissionDenied, "BILLING_REQUIRED");
    // Another organization's accounts are out of reach.
    let stranger = stack.owner().await;
    let theirs =
        create_account(&stranger.client, &stranger.org, "roles/read-only", false).await.unwrap();
    let reach = create_key(&stack, &owner.client, &theirs.name, 30).await;
    refused(reach, Code::PermissionDenied, "WRONG_ORGANIZATION");
});

backend_test!(
    an_administrator_account_never_counts_as_the_last_administrator,
    |stack| async move {
        let owner = stack.owner().await;
        let account =
            create_account(&owner.client, &owner.org, "roles/administrator", false).await.unwrap();
        let (_, api_key) = create_key(&stack, &owner.client, &account.name, 30).await.unwrap();
        let robot = with_key(&stack, &api_key).await.unwrap();
        // The robot holds administrators.delete, but the owner is the last human Administrator.
        let delete = BatchDeleteAdministratorsRequest {
            parent: owner.org.clone(),
            names: vec![owner.admin.clone()],
            validate_only: false,
        };
        let status = robot.admin().batch_delete_administrators(delete).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        let kinds: Vec<String> = status
            .get_error_details()
            .precondition_failure()
            .unwrap()
            .violations
            .iter()
            .map(|v| v.r#type.clone())
            .collect();
        assert!(kinds.iter().any(|k| k == "LAST_ADMINISTRATOR"), "{kinds:?}");
    }
);
