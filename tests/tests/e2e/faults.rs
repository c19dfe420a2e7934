//! Faults across replicas: every replica runs every relay over the same outbox tables, and
//! each message is still delivered by one of them at a time, so each invitee is mailed once.
//! (Killing processes with SIGKILL is in `crates/steward-server/tests/faults.rs`, with the real
//! binary; killing the SMTP server is in `email.rs`.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

use steward_proto::admin::v1::{Administrator, CreateAdministratorRequest, Role};
use steward_proto::auth::v1::AcceptInviteRequest;
use steward_server::ServiceKind;
use steward_storage::outbox::Outbox;

use crate::harness::{Stack, PASSWORD};

/// Messages waiting in `table`, read from the database of `kind` as the services see it.
pub(crate) async fn outbox_pending(stack: &Stack, kind: ServiceKind, table: &'static str) -> i64 {
    let url = steward_server::database_url(stack.config(), kind).unwrap();
    let db = steward_storage::connect(&url, 1).await.unwrap();
    let pending = Outbox::new(table).pending(&db).await.unwrap();
    let _ = db.close().await;
    pending
}

/// Waits (up to 30 s) until the invite outboxes (admin's effects, auth's mail) are empty.
pub(crate) async fn invites_drained(stack: &Stack) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let admin = outbox_pending(stack, ServiceKind::Admin, "admin_outbox").await;
        let mail = outbox_pending(stack, ServiceKind::Auth, "auth_mail_outbox").await;
        if admin == 0 && mail == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "invites still queued: {admin} effects, {mail} mails");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many dev mail files in `dir` are addressed to each recipient.
pub(crate) fn mails_per_recipient(dir: &std::path::Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().extension().is_none_or(|x| x != "eml") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap();
        if let Some(to) = text.lines().find_map(|l| l.strip_prefix("To: ")) {
            *counts.entry(to.trim().to_string()).or_default() += 1;
        }
    }
    counts
}

// Two full replicas relay the same admin and mail outboxes. A burst of administrators created
// through both: every invitee gets exactly one mail, none is lost, and the link in it works (two
// deliveries at once would each issue a link, the second replacing the first, and the file
// could keep the dead one). `email.rs` counts the same over SMTP, where every delivery is a
// message of its own.
backend_test!(each_invite_is_mailed_once_by_two_replicas, |stack| async move {
    const INVITES: usize = 40;
    let mut stack: Stack = stack;
    let replica = stack.add_replica().await;
    let owner = stack.owner().await;
    let clients = [
        owner.client.clone(),
        stack.client_at(&replica).await.with_token(&owner.tokens.access_token).unwrap(),
    ];
    let mut calls = tokio::task::JoinSet::new();
    let mut invited = Vec::new();
    for i in 0..INVITES {
        let email = format!("invitee-{i}-{}@example.com", uuid::Uuid::new_v4().simple());
        invited.push(email.clone());
        let client = clients[i % 2].clone();
        let parent = owner.org.clone();
        calls.spawn(async move {
            client
                .admin()
                .create_administrator(CreateAdministratorRequest {
                    parent,
                    administrator: Some(Administrator {
                        email,
                        role: Role::CommandRunner as i32,
                        ..Default::default()
                    }),
                    request_id: uuid::Uuid::new_v4().to_string(),
                })
                .await
        });
    }
    while let Some(created) = calls.join_next().await {
        created.unwrap().expect("every administrator is created");
    }

    invites_drained(&stack).await;
    let mails = mails_per_recipient(&stack.mail_dir());
    for email in &invited {
        assert_eq!(mails.get(email), Some(&1), "{email}: {mails:?}");
    }
    assert_eq!(mails.len(), INVITES + 1, "the invitees and the owner: {mails:?}");
    let auth = stack.client_for(ServiceKind::Auth).await;
    let mut accepts = tokio::task::JoinSet::new();
    for email in invited {
        let token = steward_server::newest_token_for(&stack.mail_dir(), &email).unwrap();
        let auth = auth.clone();
        accepts.spawn(async move {
            let request = AcceptInviteRequest { token, password: PASSWORD.into() };
            (email, auth.auth().accept_invite(request).await)
        });
    }
    while let Some(accepted) = accepts.join_next().await {
        let (email, accepted) = accepted.unwrap();
        accepted.unwrap_or_else(|status| panic!("the link mailed to {email}: {status:?}"));
    }
});

// Three systems end one run at the same instant (their reports wait behind row locks the test
// holds on the run's results, then go at once). Each report's transaction used to see the
// others' results still running, so the run stayed RUNNING with every result ended; now each
// takes the run's lock first and the last one ends the run. PostgreSQL only: SQLite's write
// transactions already run one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systems_ending_a_run_at_once_end_the_run() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    use steward_proto::commands::v1::{
        Command, CreateCommandRequest, Interpreter, ListSystemsRequest, RunState,
    };

    use crate::agent::{connect_key, finished, get_run, start_run, AgentProcess};

    /// Polls `run` (up to 30 s) until `done` holds; fails with every agent's log.
    async fn wait_for(
        owner: &crate::harness::Owner,
        run: &str,
        agents: &[AgentProcess],
        done: impl Fn(&steward_proto::commands::v1::Run) -> bool,
    ) -> steward_proto::commands::v1::Run {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let current = get_run(owner, run).await;
            if done(&current) {
                return current;
            }
            let logs: Vec<String> = agents.iter().map(AgentProcess::log).collect();
            assert!(Instant::now() < deadline, "{current:?}\n{}", logs.join("\n---\n"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    const AGENTS: usize = 3;
    if !crate::harness::postgres_available() {
        return;
    }
    let stack = Stack::start(steward_storage::testing::Backend::Postgres).await;
    let owner = stack.owner().await;
    let (_, key) = connect_key(&owner).await;
    let dir = tempfile::tempdir().unwrap();
    let url = stack.url(ServiceKind::Commands);
    let agents: Vec<AgentProcess> = (0..AGENTS)
        .map(|i| AgentProcess::spawn(&url, Some(&key), &dir.path().join(i.to_string()), &[]))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let systems: Vec<String> = loop {
        let listed = owner
            .client
            .systems()
            .list_systems(ListSystemsRequest {
                parent: owner.org.clone(),
                page_size: 100,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .systems;
        let up: Vec<String> =
            listed.iter().filter(|s| s.connected).map(|s| s.name.clone()).collect();
        if up.len() == AGENTS {
            break up;
        }
        assert!(Instant::now() < deadline, "{listed:?}\n{}", agents[0].log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let command = owner
        .client
        .commands()
        .create_command(CreateCommandRequest {
            parent: owner.org.clone(),
            command: Some(Command {
                display_name: "together".into(),
                script: "sleep 2\n".into(),
                interpreter: Interpreter::Sh as i32,
                timeout: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
                target_systems: systems,
                ..Default::default()
            }),
            request_id: uuid::Uuid::new_v4().to_string(),
            command_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .command
        .unwrap()
        .name;
    let run = start_run(&owner, &command).await;
    let all_running = |r: &steward_proto::commands::v1::Run| {
        r.results.len() == AGENTS && r.results.iter().all(|x| x.state == RunState::Running as i32)
    };
    wait_for(&owner, &run, &agents, all_running).await;

    let db = steward_storage::connect(&stack.config().database.url, 1).await.unwrap();
    let hold = db.begin().await.unwrap();
    hold.execute_unprepared(&format!(
        "SELECT 1 FROM commands_run_results WHERE run = '{run}' FOR UPDATE"
    ))
    .await
    .unwrap();
    // The scripts end meanwhile; their reports queue behind the locks.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(all_running(&get_run(&owner, &run).await), "the reports waited");
    hold.commit().await.unwrap();

    let ended = wait_for(&owner, &run, &agents, |r| {
        finished(r) || r.results.iter().all(|x| x.state == RunState::Succeeded as i32)
    })
    .await;
    assert!(ended.results.iter().all(|x| x.state == RunState::Succeeded as i32), "{ended:?}");
    assert_eq!(ended.state, RunState::Succeeded as i32, "every result ended: {ended:?}");
}
