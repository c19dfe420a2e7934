//! Health that says what each service's calls depend on (split servers, as deployed): a
//! service's own health name is NOT_SERVING while a peer its calls wait for does not answer, and
//! SERVING again once it does; the empty name (the probes' readiness), `liveness` and the names
//! of services that do not need the peer never follow it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use steward_proto::commands::v1::ListCommandsRequest;
use steward_server::ServiceKind;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::harness::Stack;

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

async fn health(stack: &Stack, kind: ServiceKind) -> HealthClient<Channel> {
    HealthClient::new(stack.endpoint(&stack.url(kind)).connect().await.unwrap())
}

/// Polls until `service`'s health on `kind`'s server is `want`.
async fn wait_for(stack: &Stack, kind: ServiceKind, service: &str, want: i32) {
    let mut client = health(stack, kind).await;
    let mut last = None;
    for _ in 0..300 {
        let request = HealthCheckRequest { service: service.into() };
        let status = client.check(request).await.map(|r| r.into_inner().status);
        if status.as_ref().ok() == Some(&want) {
            return;
        }
        last = Some(status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{service:?} on {kind:?} never reached {want}; last: {last:?}");
}

/// Every status `service` on `kind`'s server reports (`grpc.health.v1.Health/Watch`: the
/// current one, then each change) until the task is aborted.
async fn watch(
    stack: &Stack,
    kind: ServiceKind,
    service: &str,
) -> (Arc<Mutex<Vec<i32>>>, tokio::task::JoinHandle<()>) {
    let mut client = health(stack, kind).await;
    let mut stream = client
        .watch(HealthCheckRequest { service: service.into() })
        .await
        .unwrap_or_else(|e| panic!("watch {service:?}: {e}"))
        .into_inner();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok(Some(reply)) = stream.message().await {
            record.lock().unwrap().push(reply.status);
        }
    });
    (seen, task)
}

crate::backend_test!(
    health_names_follow_the_peers_their_calls_need,
    start = |backend| Stack::start_split(backend),
    |stack| async move {
        let mut stack = stack;
        let owner = stack.owner().await;
        let commands = stack.client_for(ServiceKind::Commands).await;
        let commands = commands.with_token(&owner.tokens.access_token).unwrap();
        let list = || {
            let mut client = commands.commands();
            let request = ListCommandsRequest { parent: owner.org.clone(), ..Default::default() };
            async move { client.list_commands(request).await }
        };
        // Every name is SERVING while admin answers (the first check may predate admin's start).
        for (kind, name) in [
            (ServiceKind::Commands, "steward.commands.v1.CommandService"),
            (ServiceKind::Commands, "steward.commands.v1.SystemService"),
            (ServiceKind::Auth, "steward.auth.v1.AuthService"),
        ] {
            wait_for(&stack, kind, name, SERVING).await;
        }
        list().await.unwrap();

        // What must not follow admin, watched through the whole outage and recovery.
        let mut unaffected = Vec::new();
        for (kind, name) in [
            (ServiceKind::Commands, ""),
            (ServiceKind::Commands, "liveness"),
            (ServiceKind::Commands, "steward.commands.v1.AgentService"),
            (ServiceKind::Commands, "steward.commands.v1.CommandsInternalService"),
            (ServiceKind::Auth, ""),
            (ServiceKind::Auth, "liveness"),
            (ServiceKind::Auth, "steward.auth.v1.AuthInternalService"),
        ] {
            let (seen, task) = watch(&stack, kind, name).await;
            unaffected.push((kind, name, seen, task));
        }

        stack.stop(ServiceKind::Admin).await;
        // The calls that need admin cannot be answered, and health says so.
        wait_for(&stack, ServiceKind::Commands, "steward.commands.v1.CommandService", NOT_SERVING)
            .await;
        wait_for(&stack, ServiceKind::Commands, "steward.commands.v1.SystemService", NOT_SERVING)
            .await;
        wait_for(&stack, ServiceKind::Auth, "steward.auth.v1.AuthService", NOT_SERVING).await;
        let refused = list().await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

        stack.restart(ServiceKind::Admin).await;
        wait_for(&stack, ServiceKind::Commands, "steward.commands.v1.CommandService", SERVING)
            .await;
        wait_for(&stack, ServiceKind::Commands, "steward.commands.v1.SystemService", SERVING).await;
        wait_for(&stack, ServiceKind::Auth, "steward.auth.v1.AuthService", SERVING).await;
        list().await.unwrap();

        for (kind, name, seen, task) in unaffected {
            task.abort();
            let seen = seen.lock().unwrap().clone();
            assert!(!seen.is_empty(), "{name:?} on {kind:?}: no status watched");
            assert!(
                seen.iter().all(|status| *status == SERVING),
                "{name:?} on {kind:?} followed admin: {seen:?}"
            );
        }
    }
);
