//! The load tool in smoke mode: every scenario for a second, and the agent simulator with a small
//! fleet, against a real stack, signed in with a service account's key. Asserts the calls
//! succeed and every agent gets its assignment, never how fast.

use std::time::Duration;

use steward_bench::{Options, Scenario};

backend_test!(the_load_tool_runs_every_scenario_without_errors, |stack| async move {
    let owner = stack.owner().await;
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
        crate::service_accounts::create_key(&stack, &owner.client, &account.name, 1).await.unwrap();
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
    let table = report.markdown();
    assert!(table.contains("| empty-tonic-health |") && table.contains("| check-access |"));
    // Without a key the authenticated scenarios are refused before any load.
    let keyless = Options { api_key: None, fleet: None, ..options };
    let refused = steward_bench::run(&keyless, &[Scenario::CheckAccess]).await.unwrap_err();
    assert!(refused.to_string().contains("STEWARD_API_KEY"), "{refused}");
});
