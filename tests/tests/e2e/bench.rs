//! The load tool in smoke mode: every scenario for a second, and the agent simulator with a small
//! fleet, against a real stack, signed in with a service account's key. Asserts the calls
//! succeed and every agent gets its assignment, never how fast.

use std::time::Duration;

use steward_bench::{Options, Scenario};

/// A service account holding what the load tool and the soak need, and its API key.
async fn bench_key(stack: &crate::harness::Stack, owner: &crate::harness::Owner) -> String {
    // What the load tool needs: read administrators, check access, and run a fleet.
    let role = crate::custom_roles::create_role(
        &owner.client,
        &owner.org,
        "bench",
        &[
            "administrators.read",
            "access.check",
            "commands.read",
            "commands.create",
            "commands.run",
            "connect_keys.create",
            "administrators.create",
            "administrators.delete",
            "runs.read",
            "runs.cancel",
        ],
    )
    .await
    .unwrap();
    let account =
        crate::service_accounts::create_account(&owner.client, &owner.org, &role.name, false)
            .await
            .unwrap();
    let (_, api_key) =
        crate::service_accounts::create_key(stack, &owner.client, &account.name, 1).await.unwrap();
    api_key
}

backend_test!(the_load_tool_runs_every_scenario_without_errors, |stack| async move {
    let owner = stack.owner().await;
    let api_key = bench_key(&stack, &owner).await;
    let options = Options {
        server: stack.url(steward_server::ServiceKind::Admin),
        ca_pem: None,
        api_key: Some(api_key),
        duration: Duration::from_secs(1),
        concurrency: 8,
        connections: 2,
        fleet: Some(steward_bench::fleet::FleetOptions {
            agents: 20,
            idle: Duration::from_millis(200),
            server_pid: Some(std::process::id()),
            agents_per_connection: 4,
            targets: 20,
            settle: Duration::from_secs(1),
        }),
        people: vec![(owner.email.clone(), crate::harness::PASSWORD.to_string())],
        organization_size: Some(60),
        hashing_threads: 1,
    };
    let report = steward_bench::run(&options, &Scenario::STEWARD).await.unwrap();
    assert!(report.baseline.ok > 0 && report.baseline.errors.is_empty(), "{report:?}");
    let names: Vec<&str> = report.scenarios.iter().map(|o| o.scenario.as_str()).collect();
    assert_eq!(
        names,
        [
            "health",
            "check-access",
            "get-administrator",
            "list-administrators",
            steward_bench::HALF_RATE
        ]
    );
    // The organization was filled up to the size asked, so the pages read were full ones.
    assert_eq!(report.organization_size, Some(60));
    let listed = owner
        .client
        .admin()
        .list_administrators(steward_proto::admin::v1::ListAdministratorsRequest {
            parent: owner.org.clone(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total_size, 60);
    for outcome in &report.scenarios {
        assert!(outcome.ok > 0, "{outcome:?}");
        assert!(outcome.errors.is_empty(), "{outcome:?}");
        assert!(outcome.ratio > 0.0 && outcome.p50_ms <= outcome.p99_ms, "{outcome:?}");
    }
    let fleet = report.fleet.as_ref().unwrap();
    assert_eq!((fleet.agents, fleet.targets, fleet.assigned), (20, 20, 20), "{fleet:?}");
    assert!(fleet.idle_cpu_percent.is_some() && fleet.rss_per_agent_kib.is_some(), "{fleet:?}");
    // A person signs in and refreshes; sign-in is quoted against raw argon2id.
    let people = Options { concurrency: 2, fleet: None, ..options.clone() };
    let signed = steward_bench::run(&people, &Scenario::PEOPLE).await.unwrap();
    let names: Vec<&str> = signed.scenarios.iter().map(|o| o.scenario.as_str()).collect();
    assert_eq!(names, ["sign-in", "refresh-session", "check-access-under-sign-in"]);
    for outcome in &signed.scenarios {
        assert!(outcome.ok > 0 && outcome.errors.is_empty(), "{outcome:?}");
    }
    let raw = signed.argon2_baseline.as_ref().unwrap();
    assert!(raw.ok > 0, "{raw:?}");
    assert!(signed.markdown().contains("| raw-argon2id |"));
    let interference = signed.interference.as_ref().unwrap();
    assert!(interference.alone.ok > 0 && interference.sign_in.ok > 0, "{interference:?}");
    assert!(interference.sign_in.errors.is_empty(), "{interference:?}");
    assert!(interference.p99_ratio > 0.0, "{interference:?}");
    assert_eq!(interference.in_flight, 2, "the CheckAccess load is capped by --concurrency");
    let table = report.markdown();
    assert!(table.contains("| empty-tonic-health |") && table.contains("| check-access |"));
    // Without a key the authenticated scenarios are refused before any load.
    let keyless = Options { api_key: None, fleet: None, ..options };
    let refused = steward_bench::run(&keyless, &[Scenario::CheckAccess]).await.unwrap_err();
    assert!(refused.to_string().contains("STEWARD_API_KEY"), "{refused}");
});

// The soak in smoke mode, on two replicas: the mixed load (reads, invites and deletions) runs
// without a failed call, every run reaches every agent of the fleet spread over both replicas,
// and this process is sampled. A few seconds say nothing about leaks; scripts/soak.sh does.
backend_test!(the_soak_runs_on_two_replicas_without_errors, |stack| async move {
    let mut stack = stack;
    let owner = stack.owner().await;
    let api_key = bench_key(&stack, &owner).await;
    let second = stack.add_replica().await;
    let options = steward_bench::soak::SoakOptions {
        servers: vec![stack.url(steward_server::ServiceKind::Admin), second],
        pids: vec![std::process::id()],
        metrics: Vec::new(),
        ca_pem: None,
        api_key,
        duration: Duration::from_secs(3),
        warmup: Duration::ZERO,
        rate: Some(40.0),
        utilization: 0.7,
        agents: 10,
        run_targets: 6,
        run_every: Duration::from_secs(1),
        sample_every: Duration::from_secs(1),
        calibration: Duration::from_secs(1),
    };
    let report = steward_bench::soak::run(&options).await.unwrap();
    assert!(report.load.ok > 0 && report.load.errors.is_empty(), "{}", report.markdown());
    assert!(report.runs >= 1, "{}", report.markdown());
    assert_eq!(report.assignments_received, report.assignments_expected, "{}", report.markdown());
    let samples = &report.samples[0];
    assert!(samples.len() >= 2 && samples.iter().all(|s| s.rss_kib > 0 && s.fds > 0));
    assert!(report.markdown().contains("| s | RSS MiB |"));
});
