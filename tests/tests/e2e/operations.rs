//! What operators rely on: request ids joining errors, responses and the audit log; liveness
//! that outlives a database outage while readiness follows it; connections recycled by age.

use std::time::Duration;

use steward_proto::admin::v1::Role;
use steward_proto::admin::v1::{
    Administrator, CreateAdministratorRequest, GetAdministratorRequest,
};
use steward_proto::audit::v1::ListAuditEventsRequest;
use steward_server::ServiceKind;
use steward_storage::testing::Backend;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt;

use crate::harness::Stack;

fn with_request_id<T>(message: T, id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-request-id", id.parse().unwrap());
    request
}

fn request_info(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .request_info()
        .map(|info| info.request_id.clone())
        .unwrap_or_default()
}

crate::backend_test!(request_ids_join_errors_responses_and_the_audit_log, |stack| async move {
    let owner = stack.owner().await;

    // An error carries the caller's id in RequestInfo and the response header.
    let missing = format!("{}/administrators/0000000000000000000000000000", owner.org);
    let err = owner
        .client
        .admin()
        .get_administrator(with_request_id(
            GetAdministratorRequest { name: missing.clone() },
            "req-e2e-1",
        ))
        .await
        .unwrap_err();
    assert_eq!(request_info(&err), "req-e2e-1", "{err:?}");
    assert_eq!(err.metadata().get("x-request-id").unwrap(), "req-e2e-1");

    // Without one, the server's id is the same in both places; an unusable one is replaced.
    for sent in [None, Some("has spaces and is not kept")] {
        let request = GetAdministratorRequest { name: missing.clone() };
        let request = match sent {
            Some(id) => with_request_id(request, id),
            None => tonic::Request::new(request),
        };
        let err = owner.client.admin().get_administrator(request).await.unwrap_err();
        let generated = request_info(&err);
        assert_eq!(generated.len(), 36, "a UUID: {generated:?}");
        assert_eq!(err.metadata().get("x-request-id").unwrap().to_str().unwrap(), generated);
    }
    // Refusals by the authentication layer too.
    let anonymous = stack.client().await;
    let err = anonymous
        .admin()
        .get_administrator(with_request_id(GetAdministratorRequest { name: missing }, "req-e2e-2"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(request_info(&err), "req-e2e-2");

    // A success answers with the id, and its audit event records it.
    let created = owner
        .client
        .admin()
        .create_administrator(with_request_id(
            CreateAdministratorRequest {
                parent: owner.org.clone(),
                administrator: Some(Administrator {
                    email: "traced@example.com".into(),
                    role: Role::ReadOnly as i32,
                    ..Default::default()
                }),
                request_id: uuid::Uuid::new_v4().to_string(),
            },
            "req-e2e-3",
        ))
        .await
        .unwrap();
    assert_eq!(created.metadata().get("x-request-id").unwrap(), "req-e2e-3");
    let mut recorded = Vec::new();
    for _ in 0..100 {
        recorded = owner
            .client
            .audit()
            .list_audit_events(ListAuditEventsRequest {
                parent: owner.org.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .audit_events
            .into_iter()
            .filter(|event| event.request_id == "req-e2e-3")
            .collect();
        if !recorded.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(recorded.len(), 1, "one audit event carries the request id");
    assert!(recorded[0].action.ends_with("CreateAdministrator"), "{:?}", recorded[0]);
});

async fn health_status(url: &str, service: &str) -> i32 {
    let channel = tonic::transport::Channel::from_shared(url.to_string()).unwrap().connect().await;
    let Ok(channel) = channel else { return -1 };
    HealthClient::new(channel)
        .check(HealthCheckRequest { service: service.into() })
        .await
        .map_or(-1, |reply| reply.into_inner().status)
}

/// Polls until the health of `service` at `url` is `want` (1 SERVING, 2 NOT_SERVING).
async fn wait_for_health(url: &str, service: &str, want: i32) {
    for _ in 0..300 {
        if health_status(url, service).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{service:?} at {url} never reached status {want}");
}

// A database outage turns readiness NOT_SERVING while liveness stays SERVING (a restarted pod
// would not bring the database back), and readiness recovers without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_outlives_a_database_outage_and_readiness_follows_it() {
    use sea_orm::{ConnectionTrait, Database};
    if !crate::harness::postgres_available() {
        return;
    }
    let stack = Stack::start(Backend::Postgres).await;
    let url = stack.url(ServiceKind::Admin);
    assert_eq!(health_status(&url, "").await, 1);
    assert_eq!(health_status(&url, "liveness").await, 1);

    let maintenance = std::env::var(steward_storage::testing::POSTGRES_ENV).unwrap();
    let admin = Database::connect(&maintenance).await.unwrap();
    let database = stack.config().database.url.rsplit('/').next().unwrap().to_string();
    let cut = |allow: bool| format!("ALTER DATABASE \"{database}\" WITH ALLOW_CONNECTIONS {allow}");
    admin.execute_unprepared(&cut(false)).await.unwrap();
    admin
        .execute_unprepared(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
        ))
        .await
        .unwrap();

    wait_for_health(&url, "", 2).await;
    wait_for_health(&url, "steward.admin.v1.AdminService", 2).await;
    assert_eq!(health_status(&url, "liveness").await, 1, "liveness ignores the database");

    admin.execute_unprepared(&cut(true)).await.unwrap();
    wait_for_health(&url, "", 1).await;
    assert_eq!(health_status(&url, "liveness").await, 1);
    admin.close().await.unwrap();
}

// server.max_connection_age_secs: a connection past its age is told to go away, and a stream on
// it ends once the grace period is over, so long-lived clients reconnect (to any replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_recycled_once_past_their_age() {
    let stack = Stack::start_with(Backend::Sqlite, |config| {
        config.server.max_connection_age_secs = 1;
        config.server.max_connection_age_grace_secs = 1;
    })
    .await;
    let channel = tonic::transport::Channel::from_shared(stack.url(ServiceKind::Admin))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Health/Watch never ends on its own while the status does not change.
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, 1);
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its connection's age and grace");
}
