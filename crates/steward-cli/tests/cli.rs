//! The `steward` binary against the real `steward-server dev` (and the real `steward-agent`):
//! the seed walk-through with the CLI only, session refresh, secrets on stdin, error details
//! and exit codes.
//!
//! Needs `cargo build -p steward-server -p steward-agent` first: the binaries are looked up in
//! the target directory next to this test executable.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    clippy::needless_pass_by_value
)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery staple 42!";

/// A binary built next to this test (`target/debug/NAME`).
fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(path.exists(), "{} missing: run `cargo build -p {name}` first", path.display());
    path
}

struct Dev {
    child: Child,
    url: String,
    owner_token: String,
    data: tempfile::TempDir,
    /// With `dev --tls`: the CA file the banner names.
    ca: Option<String>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token_in(text: &str) -> Option<String> {
    let start = text.find("token=")? + "token=".len();
    let token: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    (!token.is_empty()).then_some(token)
}

fn start_dev(env: &[(&str, &str)]) -> Dev {
    start_dev_args(&[], env)
}

fn start_dev_args(args: &[&str], env: &[(&str, &str)]) -> Dev {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(sibling_binary("steward-server"))
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut addr, mut token, mut ca) = (None, None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && (addr.is_none() || token.is_none()) {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.split("listening on ").nth(1) {
            addr = rest.split_whitespace().next().map(str::to_string);
        }
        if line.contains("set-password?token=") {
            token = token_in(&line);
        }
        if let Some(rest) = line.split("clients trust the dev CA: ").nth(1) {
            ca = Some(rest.trim().to_string());
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let scheme = if ca.is_some() { "https" } else { "http" };
    Dev {
        child,
        url: format!("{scheme}://{}", addr.expect("dev printed its address")),
        owner_token: token.expect("dev printed the owner's link"),
        data,
        ca,
    }
}

impl Dev {
    /// The newest invite/reset token mailed to `email`.
    fn mailed_token(&self, email: &str) -> String {
        let mail = self.data.path().join("mail");
        for _ in 0..100 {
            let mut newest: Option<(std::time::SystemTime, String)> = None;
            for entry in std::fs::read_dir(&mail).into_iter().flatten().flatten() {
                let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
                let to_them = text
                    .lines()
                    .any(|l| l.to_ascii_lowercase().starts_with("to:") && l.contains(email));
                let modified = entry.metadata().unwrap().modified().unwrap();
                if let (true, Some(token)) = (to_them, token_in(&text)) {
                    if newest.as_ref().is_none_or(|(t, _)| modified >= *t) {
                        newest = Some((modified, token));
                    }
                }
            }
            if let Some((_, token)) = newest {
                return token;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no mail with a token for {email}");
    }
}

/// One identity: its own session directory.
struct Identity {
    dir: tempfile::TempDir,
    url: String,
    /// Trusted through `STEWARD_CA_FILE`.
    ca: Option<String>,
    /// More environment for every run (such as `STEWARD_API_KEY`).
    env: Vec<(&'static str, String)>,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

impl Identity {
    fn new(dev: &Dev) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            url: dev.url.clone(),
            ca: dev.ca.clone(),
            env: Vec::new(),
        }
    }

    fn session_file(&self) -> PathBuf {
        self.dir.path().join("session.json")
    }

    fn session(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.session_file()).unwrap()).unwrap()
    }

    fn run_with(&self, args: &[&str], stdin: &str) -> Out {
        self.run_at(&self.url, args, stdin)
    }

    /// Runs `steward --server URL ARGS...` with `stdin`, in this identity's session directory.
    fn run_at(&self, url: &str, args: &[&str], stdin: &str) -> Out {
        self.run_opts(Some(url), args, stdin)
    }

    /// `steward ARGS...` in this identity's configuration directory, with `STEWARD_CA_FILE`
    /// (if any) and this identity's environment; without `--server` unless `url` is given.
    fn command(&self, url: Option<&str>, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_steward"));
        command.env_remove("STEWARD_CA_FILE").env_remove("STEWARD_PROFILE");
        if let Some(ca) = &self.ca {
            command.env("STEWARD_CA_FILE", ca);
        }
        command
            .args(url.iter().flat_map(|url| ["--server", url]))
            .args(args)
            .env_remove("STEWARD_SERVER")
            .env_remove("STEWARD_API_KEY")
            .env("STEWARD_CONFIG_DIR", self.dir.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Runs `steward [--server URL] ARGS...` with `stdin` (see [`Identity::command`]).
    fn run_opts(&self, url: Option<&str>, args: &[&str], stdin: &str) -> Out {
        let mut child = self
            .command(url, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The CLI may exit (a usage error) before reading: a broken pipe here is fine.
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        let output = child.wait_with_output().unwrap();
        let out = Out {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        // No command ever shows a password or a session token.
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(!all.contains(PASSWORD), "password printed by {args:?}");
        for (_, api_key) in self.env.iter().filter(|(k, _)| *k == "STEWARD_API_KEY") {
            assert!(!all.contains(api_key.as_str()), "API key printed by {args:?}");
        }
        for file in self.session_files() {
            let Ok(text) = std::fs::read_to_string(file) else { continue };
            let session: serde_json::Value = serde_json::from_str(&text).unwrap();
            for key in ["access_token", "refresh_token"] {
                let token = session[key].as_str().unwrap_or_default();
                assert!(token.is_empty() || !all.contains(token), "{key} printed by {args:?}");
            }
        }
        out
    }

    /// The session files of every profile.
    fn session_files(&self) -> Vec<PathBuf> {
        let profiles = std::fs::read_dir(self.dir.path().join("profiles")).into_iter().flatten();
        std::iter::once(self.session_file())
            .chain(profiles.flatten().map(|p| p.path().join("session.json")))
            .collect()
    }

    fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, "")
    }

    /// `--output json` and parse.
    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        self.run(&all).ok().json()
    }

    /// Accepts an invite as a script does: the token, then the password, on stdin (never on
    /// the command line); then signs in.
    fn accept_and_login(&self, token: &str, email: &str) {
        let password = format!("{PASSWORD}\n");
        self.run_with(&["accept-invite", "--password-stdin"], &format!("{token}\n{password}")).ok();
        self.run_with(&["login", "--email", email, "--password-stdin"], &password).ok();
    }
}

fn name(value: &serde_json::Value) -> String {
    value["name"].as_str().unwrap().to_string()
}

fn id(name: &str) -> &str {
    name.rsplit('/').next().unwrap()
}

#[test]
fn seed_walkthrough_with_the_cli() {
    cli_walkthrough(start_dev(&[]));
}

/// An auditor's walk-through: a Read Only administrator lists administrators, commands and the
/// audit log, and is refused every change, the payment card and runs, with the permission named.
#[test]
fn read_only_auditor_with_the_cli() {
    let dev = start_dev(&[]);
    let owner = Identity::new(&dev);
    let auditor = Identity::new(&dev);
    owner.accept_and_login(&dev.owner_token, "owner@example.com");
    let created =
        owner.json(&["admins", "create", "--email", "auditor@example.com", "--role", "read-only"]);
    assert_eq!(created["role"], "ROLE_READ_ONLY");
    assert_eq!(created["role_name"], "roles/read-only");
    let role = owner.json(&["roles", "get", "read-only"]);
    let permissions: Vec<&str> =
        role["permissions"].as_array().unwrap().iter().filter_map(|p| p.as_str()).collect();
    assert!(permissions.contains(&"audit.read") && !permissions.contains(&"commands.run"));
    auditor.accept_and_login(&dev.mailed_token("auditor@example.com"), "auditor@example.com");
    let admins = auditor.json(&["admins", "list"]);
    assert_eq!(admins.as_array().map(Vec::len), Some(2), "{admins}");
    auditor.json(&["audit", "list"]);
    auditor.json(&["commands", "list"]);
    for (args, why) in [
        (
            &["admins", "create", "--email", "x@example.com", "--role", "read-only"][..],
            "administrators.create",
        ),
        (&["connect-keys", "create"][..], "connect_keys.create"),
        (&["billing", "get"][..], "BILLING_REQUIRED"),
    ] {
        let refused = auditor.run(args);
        assert_eq!(refused.code, 1, "{args:?}: {}", refused.stderr);
        assert!(refused.stderr.contains("PERMISSION_DENIED"), "{}", refused.stderr);
        assert!(refused.stderr.contains(why), "{args:?}: {}", refused.stderr);
    }

    // The organization's own role: created, assigned by id, not deletable while held.
    let role = owner.json(&[
        "roles",
        "create",
        "log-reader",
        "--name",
        "Log reader",
        "--permission",
        "audit.read",
    ]);
    let role_name = name(&role);
    assert!(role_name.ends_with("/roles/log-reader"), "{role}");
    let held =
        owner.json(&["admins", "create", "--email", "logs@example.com", "--role", "log-reader"]);
    assert_eq!(
        (held["role"].as_str(), held["role_name"].as_str()),
        (Some("ROLE_CUSTOM"), Some(role_name.as_str()))
    );
    let in_use = owner.run(&["roles", "delete", "log-reader"]);
    assert_eq!(in_use.code, 1, "{}", in_use.stderr);
    assert!(in_use.stderr.contains("ROLE_IN_USE"), "{}", in_use.stderr);
    let narrowed = owner.json(&["roles", "update", "log-reader", "--no-permissions"]);
    assert!(!narrowed["permissions"].as_array().unwrap().iter().any(|p| p == "audit.read"));
    owner.run(&["admins", "delete", "logs@example.com"]).ok();
    owner.run(&["roles", "delete", "log-reader"]).ok();
}

/// A CI job as a service account: the owner creates one with the Manager role and a key; the
/// job, with only `STEWARD_API_KEY`, may do what a Manager may and is refused the rest; once
/// the key is deleted the job is UNAUTHENTICATED. The key is never printed by the job's runs.
#[test]
fn ci_job_with_a_service_account_key() {
    let dev = start_dev(&[]);
    let owner = Identity::new(&dev);
    owner.accept_and_login(&dev.owner_token, "owner@example.com");
    let org = owner.session()["organization"].as_str().unwrap().to_string();
    let account =
        owner.json(&["service-accounts", "create", "--name", "CI deploys", "--role", "manager"]);
    assert_eq!(account["role_name"], "roles/manager", "{account}");
    assert_eq!(account["display_name"], "CI deploys");
    let account_name = name(&account);
    assert!(account_name.starts_with(&format!("{org}/serviceAccounts/")), "{account}");
    assert_eq!(
        owner.json(&["service-accounts", "get", id(&account_name)])["name"],
        account["name"]
    );
    let listed = owner.run(&["service-accounts", "list"]).ok();
    assert!(listed.stdout.contains(id(&account_name)), "{}", listed.stdout);

    // The key: 90 days by default, its secret shown this once.
    let created = owner.json(&["service-accounts", "keys", "create", id(&account_name)]);
    let api_key = created["api_key"].as_str().unwrap().to_string();
    assert!(api_key.starts_with("stw_"), "{created}");
    let key_name = name(&created["key"]);
    assert!(key_name.starts_with(&format!("{account_name}/keys/")), "{created}");
    let expires: chrono::DateTime<chrono::Utc> =
        created["key"]["expire_time"].as_str().unwrap().parse().unwrap();
    let days = (expires - chrono::Utc::now()).num_hours() as f64 / 24.0;
    assert!((89.0..=90.1).contains(&days), "{created}");
    let keys = owner.run(&["service-accounts", "keys", "list", &account_name]).ok();
    // The table names each key as `keys delete` takes it: `S/keys/K`.
    let short_key = format!("{}/keys/{}", id(&account_name), id(&key_name));
    assert!(keys.stdout.contains(&short_key), "{}", keys.stdout);
    assert!(!keys.stdout.contains(&api_key), "the key is shown once");
    // In text, the key is alone on the last line; a key's ID alone is not a key's name.
    let second =
        owner.run(&["service-accounts", "keys", "create", &account_name, "--expires-in", "7"]);
    let second = second.ok();
    let last = second.stdout.lines().last().unwrap();
    assert!(last.starts_with("stw_") && !last.contains(' '), "{}", second.stdout);
    assert!(second.stderr.contains("only this once"), "{}", second.stderr);
    let second_key = second.stdout.lines().find_map(|l| l.strip_prefix("name:")).unwrap().trim();
    assert_eq!(owner.run(&["service-accounts", "keys", "delete", id(second_key)]).code, 2);
    owner.run(&["service-accounts", "keys", "delete", second_key]).ok();

    // The CI job: no session file, only the key.
    let ci = Identity { env: vec![("STEWARD_API_KEY", api_key.clone())], ..Identity::new(&dev) };
    assert_eq!(ci.json(&["commands", "list"]), serde_json::json!([]));
    let me = ci.json(&["whoami"]);
    assert_eq!(
        (me["service_account"].as_str(), me["organization"].as_str()),
        (Some(account_name.as_str()), Some(org.as_str()))
    );
    let connect_key = ci.json(&["connect-keys", "create", "--name", "from ci"]);
    assert_eq!(connect_key["creator"], account_name.as_str(), "{connect_key}");
    assert!(name(&connect_key).starts_with(&format!("{org}/connectKeys/")), "{connect_key}");
    let refused = ci.run(&["admins", "list"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(refused.stderr.contains("PERMISSION_DENIED"), "{}", refused.stderr);
    assert!(refused.stderr.contains("ROLE_REQUIRED"), "{}", refused.stderr);
    let login = ci.run_with(
        &["login", "--email", "owner@example.com", "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );
    assert_eq!(login.code, 2, "no sign-in while acting as a service account: {}", login.stderr);
    assert!(login.stderr.contains("STEWARD_API_KEY"), "{}", login.stderr);
    assert!(!ci.session_file().exists(), "the session file is neither read nor written");

    // The key deleted, the same job is refused.
    owner.run(&["service-accounts", "keys", "delete", &key_name]).ok();
    let ended = ci.run(&["commands", "list"]);
    assert_eq!(ended.code, 1, "{}", ended.stderr);
    assert!(ended.stderr.contains("UNAUTHENTICATED"), "{}", ended.stderr);
    assert!(ended.stderr.contains("STEWARD_API_KEY"), "{}", ended.stderr);

    owner.run(&["service-accounts", "delete", id(&account_name)]).ok();
    let gone = owner.run(&["service-accounts", "get", &account_name]);
    assert!(gone.code == 1 && gone.stderr.contains("NOT_FOUND"), "{}", gone.stderr);
}

/// The same walk-through against `dev --tls`, the CLI trusting the dev CA through
/// `STEWARD_CA_FILE` and the agent through `--ca-file`.
#[test]
fn seed_walkthrough_with_the_cli_over_tls() {
    let dev = start_dev_args(&["--tls"], &[]);
    assert!(dev.url.starts_with("https://"), "{}", dev.url);
    // Without the CA the CLI says the certificate is not trusted, and exits 1.
    let stranger = Identity { ca: None, ..Identity::new(&dev) };
    let refused =
        stranger.run_with(&["login", "--email", "x@example.com", "--password-stdin"], "x\n");
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("cannot connect") && refused.stderr.contains("UnknownIssuer"),
        "{}",
        refused.stderr
    );
    // Plaintext to a server that is not on this machine is refused before anything is sent.
    let remote = stranger.run_at(
        "http://192.0.2.1:50051",
        &["login", "--email", "x@example.com", "--password-stdin"],
        "x\n",
    );
    assert_eq!(remote.code, 2, "{}", remote.stderr);
    assert!(remote.stderr.contains("--insecure-plaintext"), "{}", remote.stderr);
    // --ca-file works like the variable.
    let ca = dev.ca.clone().unwrap();
    let flagged = stranger.run_with(
        &["--ca-file", &ca, "login", "--email", "x@example.com", "--password-stdin"],
        "wrong password\n",
    );
    assert!(flagged.stderr.contains("UNAUTHENTICATED"), "{}", flagged.stderr);
    cli_walkthrough(dev);
}

/// A real `steward-agent`, registered with a connect key `owner` creates.
struct Agent {
    child: Child,
    /// The system it registered (its resource name).
    system: String,
    _state: tempfile::TempDir,
}

impl Agent {
    fn start(dev: &Dev, owner: &Identity) -> Self {
        let key = owner.json(&["connect-keys", "create", "--name", "lab"]);
        let key = key["key"].as_str().unwrap().to_string();
        assert!(!owner.run(&["connect-keys", "list"]).ok().stdout.contains(&key), "key shown once");
        let state = tempfile::tempdir().unwrap();
        let child = Command::new(sibling_binary("steward-agent"))
            .args(dev.ca.iter().flat_map(|ca| ["--ca-file", ca.as_str()]))
            .args(["--server", &dev.url, "--connect-key", &key, "--state-dir"])
            .arg(state.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let system = (0..100)
            .find_map(|_| {
                let systems = owner.json(&["systems", "list"]);
                let found = systems.get(0).map(name);
                if found.is_none() {
                    std::thread::sleep(Duration::from_millis(100));
                }
                found
            })
            .expect("the agent registered its system");
        Self { child, system, _state: state }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

fn cli_walkthrough(dev: Dev) {
    let owner = Identity::new(&dev);
    let runner = Identity::new(&dev);

    // 1. The owner accepts its invite (the password only ever on stdin) and signs in.
    let refused = owner.run(&["accept-invite", "--token", &dev.owner_token]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("--password-stdin"), "{}", refused.stderr);
    owner.accept_and_login(&dev.owner_token, "owner@example.com");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(owner.session_file()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the session file is private");
    }
    let profile = owner.json(&["whoami"]);
    assert_eq!(profile["administrator"]["email"], "owner@example.com");
    assert_eq!(profile["administrator"]["role"], "ROLE_ADMINISTRATOR");
    let org = profile["organization"]["name"].as_str().unwrap().to_string();
    let owner_name = name(&profile["administrator"]);
    assert_eq!(owner.session()["organization"], org.as_str());
    let text = owner.run(&["whoami"]).ok();
    assert!(text.stdout.contains("owner@example.com"), "{}", text.stdout);

    // 2. A Command Runner, invited by mail, accepts and signs in with its own session.
    let created = owner.json(&[
        "admins",
        "create",
        "--email",
        "helpdesk@example.com",
        "--role",
        "command-runner",
        "--whats-new",
    ]);
    assert_eq!(created["state"], "STATE_INVITED");
    assert_eq!(created["role"], "ROLE_COMMAND_RUNNER");
    assert_eq!(created["whats_new"], true);
    let runner_name = name(&created);
    runner.accept_and_login(&dev.mailed_token("helpdesk@example.com"), "helpdesk@example.com");
    assert_eq!(runner.json(&["whoami"])["administrator"]["name"], runner_name.as_str());
    // A Command Runner may toggle its own "What's New", and nothing else of its profile.
    let toggled = runner.json(&["profile", "--whats-new", "false"]);
    assert_eq!(toggled["administrator"]["whats_new"], false);
    assert_eq!(toggled["administrator"]["role"], created["role"]);
    assert_eq!(runner.json(&["whoami"])["administrator"]["whats_new"], false);
    let toggled = runner.json(&["profile", "--whats-new", "true"]);
    assert_eq!(toggled["administrator"]["whats_new"], true);

    // Everything but its own commands is refused, with the reason.
    let denied = runner.run(&["admins", "list"]);
    assert_eq!(denied.code, 1);
    assert!(denied.stderr.contains("PERMISSION_DENIED"), "{}", denied.stderr);
    assert!(denied.stderr.contains("ROLE_REQUIRED"), "{}", denied.stderr);
    let denied = runner.run(&["--output", "json", "connect-keys", "create"]);
    assert_eq!(denied.code, 1);
    let error: serde_json::Value = serde_json::from_str(denied.stderr.trim()).unwrap();
    assert_eq!(error["error"]["code"], "PERMISSION_DENIED");

    // 3. Edits touch only the flags given; the list shows them.
    let updated = owner.json(&["admins", "update", id(&runner_name), "--require-mfa", "true"]);
    assert_eq!(updated["mfa_required"], true);
    assert_eq!(updated["whats_new"], true, "fields not given are left alone");
    assert_eq!(updated["role"], "ROLE_COMMAND_RUNNER");
    let listed = owner.json(&["admins", "list", "--filter", "mfa_required = true"]);
    let emails: Vec<&str> =
        listed.as_array().unwrap().iter().map(|a| a["email"].as_str().unwrap()).collect();
    assert_eq!(emails, ["helpdesk@example.com"]);
    let table = owner.run(&["admins", "list"]).ok();
    assert!(table.stdout.contains(id(&runner_name)) && table.stdout.contains("ACTIVE"));
    assert!(table.stdout.contains("command-runner  "), "{}", table.stdout);
    assert!(table.stdout.lines().all(|l| l.chars().count() <= 120), "{}", table.stdout);
    // A stale etag is ABORTED.
    let stale = created["etag"].as_str().unwrap();
    let aborted =
        owner.run(&["admins", "update", &runner_name, "--whats-new", "false", "--etag", stale]);
    assert_eq!(aborted.code, 1);
    assert!(aborted.stderr.contains("ABORTED"), "{}", aborted.stderr);
    // No flag at all is a usage error.
    assert_eq!(owner.run(&["admins", "update", &runner_name]).code, 2);
    // Field errors name the field.
    let invalid = owner.run(&["admins", "create", "--email", "nope", "--role", "administrator"]);
    assert_eq!(invalid.code, 1);
    assert!(invalid.stderr.contains("INVALID_ARGUMENT"), "{}", invalid.stderr);
    assert!(invalid.stderr.contains("administrator.email"), "{}", invalid.stderr);

    // 4. A system with a real agent, a command on it granted to the runner, run and followed.
    let mut agent = Agent::start(&dev, &owner);
    let system = agent.system.clone();
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), "echo report-ok\necho warn-line >&2\n").unwrap();
    let command = owner.json(&[
        "commands",
        "create",
        "--name",
        "disk usage report",
        "--script",
        script.path().to_str().unwrap(),
        "--interpreter",
        "sh",
        "--timeout",
        "30s",
        "--system",
        id(&system),
    ]);
    assert_eq!(command["timeout"], "30s");
    assert_eq!(command["target_systems"][0], system.as_str());
    let created_etag = command["etag"].as_str().unwrap().to_string();
    let command = name(&command);
    // Partial updates: only the fields given change; a stale etag is refused.
    let renamed = owner.json(&["systems", "update", id(&system), "--name", "lab-1"]);
    assert_eq!(renamed["display_name"], "lab-1");
    let edited = owner.json(&[
        "commands",
        "update",
        id(&command),
        "--timeout",
        "45s",
        "--description",
        "weekly",
    ]);
    assert_eq!(edited["timeout"], "45s");
    assert_eq!(edited["description"], "weekly");
    assert_eq!(edited["display_name"], "disk usage report", "fields not given are left alone");
    assert_eq!(edited["target_systems"][0], system.as_str());
    assert_eq!(owner.run(&["commands", "update", &command]).code, 2, "nothing to change");
    let stale =
        owner.run(&["commands", "update", &command, "--name", "x", "--etag", &created_etag]);
    assert!(stale.code == 1 && stale.stderr.contains("ABORTED"), "{}", stale.stderr);
    let refused = runner.run(&["commands", "update", &command, "--name", "mine"]);
    assert!(
        refused.code == 1 && refused.stderr.contains("PERMISSION_DENIED"),
        "{}",
        refused.stderr
    );
    let failing = owner.run_with(
        &["--output", "json", "commands", "create", "--name", "fails", "--script", "-"],
        "exit 3\n",
    );
    assert_eq!(failing.code, 2, "--interpreter is required: {}", failing.stderr);
    let failing = owner.run_with(
        &[
            "--output",
            "json",
            "commands",
            "create",
            "--name",
            "fails",
            "--script",
            "-",
            "--interpreter",
            "sh",
            "--system",
            &system,
        ],
        "echo partial; exit 3\n",
    );
    let failing = name(&failing.ok().json());
    let grant = owner.json(&["commands", "grant", id(&command), "--to", "helpdesk@example.com"]);
    assert_eq!(grant["grantee"], runner_name.as_str());
    let grants = owner.json(&["commands", "grants", id(&command)]);
    assert_eq!(grants.as_array().unwrap().len(), 1);
    assert_eq!(owner.json(&["commands", "show-grant", &name(&grant)]), grant);
    let permissions = runner.json(&["permissions", "list"]);
    assert!(permissions.as_array().unwrap().iter().any(|p| p["name"] == "commands.run"));
    let role = runner.json(&["roles", "get", "command-runner"]);
    assert!(role["permissions"].as_array().unwrap().iter().any(|p| p == "commands.run"));

    let visible = runner.json(&["commands", "list"]);
    let visible: Vec<String> = visible.as_array().unwrap().iter().map(name).collect();
    assert_eq!(visible, std::slice::from_ref(&command), "the runner sees only its granted command");
    let ran = runner.run(&["commands", "run", id(&command), "--wait"]).ok();
    assert!(ran.stdout.contains("report-ok"), "{}", ran.stdout);
    assert!(ran.stderr.contains("warn-line"), "{}", ran.stderr);
    assert!(ran.stderr.contains("RUN_STATE_SUCCEEDED"), "{}", ran.stderr);
    let not_granted = runner.run(&["commands", "run", &failing]);
    assert_eq!(not_granted.code, 1);
    assert!(not_granted.stderr.contains("PERMISSION_DENIED"), "{}", not_granted.stderr);
    let failed = owner.run(&["commands", "run", &failing, "--wait"]);
    assert_eq!(failed.code, 1, "a failed run exits 1: {}", failed.stderr);
    assert!(failed.stdout.contains("partial"), "{}", failed.stdout);
    assert!(failed.stderr.contains("RUN_STATE_FAILED") && failed.stderr.contains("exit 3"));
    let runs = runner.json(&["runs", "list"]);
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 1, "the runner sees only its own runs");
    let run = runner.json(&["runs", "get", id(&name(&runs[0]))]);
    assert_eq!(run["state"], "RUN_STATE_SUCCEEDED");
    assert_eq!(run["results"][0]["stdout"], "report-ok\n");
    let revoked = owner.run(&["commands", "revoke", &name(&grant)]).ok();
    assert!(revoked.stdout.contains("revoked"), "{}", revoked.stdout);
    assert_eq!(runner.json(&["commands", "list"]), serde_json::json!([]));
    agent.stop();

    // 5. Deleting: never yourself; a dry run shows who would go; then delete.
    let own = owner.run(&["admins", "delete", &owner_name, "--dry-run"]);
    assert_eq!(own.code, 1);
    assert!(own.stderr.contains("FAILED_PRECONDITION"), "{}", own.stderr);
    assert!(own.stderr.contains("SELF_DELETE"), "{}", own.stderr);
    let preview = owner.run(&["admins", "delete", id(&runner_name), "--dry-run"]).ok();
    assert!(preview.stdout.contains("would delete 1"), "{}", preview.stdout);
    assert!(preview.stdout.contains("helpdesk@example.com"), "{}", preview.stdout);
    assert_eq!(owner.json(&["admins", "get", &runner_name])["email"], "helpdesk@example.com");
    let deleted = owner.json(&["admins", "delete", "helpdesk@example.com"]);
    assert_eq!(deleted[0]["name"], runner_name.as_str());
    let gone = owner.run(&["admins", "get", &runner_name]);
    assert!(gone.code == 1 && gone.stderr.contains("NOT_FOUND"), "{}", gone.stderr);
    // The deleted runner's session no longer works.
    let ended = runner.run(&["whoami"]);
    assert_eq!(ended.code, 1, "{}", ended.stdout);

    // 6. The audit log saw it all.
    let events = owner.json(&["audit", "list", "--limit", "500"]);
    let actions: Vec<&str> =
        events.as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.iter().any(|a| a.ends_with("BatchDeleteAdministrators")), "{actions:?}");

    // Logout revokes the session and forgets it.
    owner.run(&["logout"]).ok();
    assert!(!owner.session_file().exists());
    let out = owner.run(&["whoami"]);
    assert!(out.code == 1 && out.stderr.contains("not signed in"), "{}", out.stderr);
}

#[test]
fn sessions_refresh_once_and_secrets_stay_on_stdin() {
    let dev = start_dev(&[]);
    let owner = Identity::new(&dev);
    owner.accept_and_login(&dev.owner_token, "owner@example.com");

    // A rejected access token is renewed with the refresh token, once, and stored.
    let mut session = owner.session();
    let refresh = session["refresh_token"].as_str().unwrap().to_string();
    session["access_token"] = "not.a.token".into();
    std::fs::write(owner.session_file(), session.to_string()).unwrap();
    assert_eq!(owner.json(&["whoami"])["administrator"]["email"], "owner@example.com");
    let renewed = owner.session();
    assert_ne!(renewed["access_token"], "not.a.token");
    assert_ne!(renewed["refresh_token"], refresh.as_str(), "the refresh token rotated");

    // With both tokens dead, the session has ended: one refresh attempt, then a clear error.
    let mut broken = renewed.clone();
    broken["access_token"] = "not.a.token".into();
    broken["refresh_token"] = "not-a-refresh-token".into();
    std::fs::write(owner.session_file(), broken.to_string()).unwrap();
    let ended = owner.run(&["whoami"]);
    assert_eq!(ended.code, 1);
    assert!(ended.stderr.contains("steward login"), "{}", ended.stderr);
    let password = format!("{PASSWORD}\n");
    owner.run_with(&["login", "--email", "owner@example.com", "--password-stdin"], &password).ok();

    // Tokens are never sent to another server.
    let elsewhere = owner.run_at("http://127.0.0.1:9", &["whoami"], "");
    assert!(
        elsewhere.code == 1 && elsewhere.stderr.contains("not signed in"),
        "{}",
        elsewhere.stderr
    );

    // A wrong password is UNAUTHENTICATED; a missing stdin line is an input error.
    let wrong = owner.run_with(
        &["login", "--email", "owner@example.com", "--password-stdin"],
        "wrong password entirely\n",
    );
    assert!(wrong.code == 1 && wrong.stderr.contains("UNAUTHENTICATED"), "{}", wrong.stderr);
    let empty = owner.run(&["login", "--email", "owner@example.com", "--password-stdin"]);
    assert_eq!(empty.code, 1, "{}", empty.stderr);

    // The card number and CVC come from stdin; only the last four digits come back.
    let year = chrono::Datelike::year(&chrono::Utc::now()) + 3;
    let exp = format!("12/{year}");
    let usage = owner.run(&["billing", "set", "--number-stdin"]);
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    let card = owner.run_with(
        &["--output", "json", "billing", "set", "--number-stdin", "--exp", &exp],
        "4242 4242 4242 4242\n123\n",
    );
    let card = card.ok();
    // Checked field by field: a random hex id or etag may contain "123" by chance.
    let card = card.json();
    fn leaks(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => {
                s == "123" || s.replace(' ', "").contains("4242424242424242")
            }
            serde_json::Value::Array(items) => items.iter().any(leaks),
            serde_json::Value::Object(fields) => fields.values().any(leaks),
            _ => false,
        }
    }
    assert!(!leaks(&card), "{card}");
    assert_eq!(card["last4"], "4242");
    assert_eq!(card["brand"], "CARD_BRAND_VISA");
    assert_eq!(card["exp_year"], year);
    let bad = owner.run_with(
        &["billing", "set", "--number-stdin", "--exp", &exp],
        "4242 4242 4242 4241\n123\n",
    );
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("payment_card.card_number"), "{}", bad.stderr);
    assert!(!bad.stderr.contains("4241"), "{}", bad.stderr);
    let got = owner.json(&["billing", "get"]);
    assert_eq!(got["last4"], "4242");
    let renamed = owner.json(&["billing", "set", "--name", "Ada Lovelace"]);
    assert_eq!(renamed["cardholder_name"], "Ada Lovelace");
    assert_eq!(renamed["last4"], "4242");

    // Changing the password reads both from stdin.
    let new_password = "another quite long passphrase 7%";
    let changed = owner
        .run_with(&["password", "change", "--stdin"], &format!("{PASSWORD}\n{new_password}\n"));
    let changed = changed.ok();
    assert!(!changed.stdout.contains(new_password) && !changed.stderr.contains(new_password));
    owner
        .run_with(
            &["login", "--email", "owner@example.com", "--password-stdin"],
            &format!("{new_password}\n"),
        )
        .ok();

    // MFA enrolment writes the QR code privately and prints the otpauth URI.
    let qr = owner.dir.path().join("qr.png");
    let enrol = owner.json(&["mfa", "enroll", "--qr", qr.to_str().unwrap()]);
    assert!(enrol["otpauth_uri"].as_str().unwrap().starts_with("otpauth://totp/"));
    assert!(std::fs::read(&qr).unwrap().starts_with(b"\x89PNG"));
    let wrong_code = owner.run(&["mfa", "confirm", "--code", "000000"]);
    assert_eq!(wrong_code.code, 1);
    assert!(wrong_code.stderr.contains("INVALID_ARGUMENT"), "{}", wrong_code.stderr);
}

#[test]
fn mfa_enrolment_then_sign_in_with_a_second_factor() {
    let dev = start_dev(&[]);
    let owner = Identity::new(&dev);
    owner.accept_and_login(&dev.owner_token, "owner@example.com");
    let password = format!("{PASSWORD}\n");
    let login = ["login", "--email", "owner@example.com", "--password-stdin"];

    let enrol = owner.json(&["mfa", "enroll"]);
    let generator = totp_rs::Totp::from_url(enrol["otpauth_uri"].as_str().unwrap()).unwrap();
    let code = generator.generate_current().to_string();
    let confirmed = owner.json(&["mfa", "confirm", "--code", &code]);
    let recovery: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert!(recovery.len() >= 5, "{recovery:?}");

    // Without a second factor the sign-in stops at the challenge and says what is missing.
    owner.run(&["logout"]).ok();
    let missing = owner.run_with(&login, &password);
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("--totp"), "{}", missing.stderr);
    assert!(!owner.session_file().exists(), "no session without the second factor");

    // A recovery code completes it once.
    let mut with_recovery = login.to_vec();
    with_recovery.extend(["--recovery-code", &recovery[0]]);
    owner.run_with(&with_recovery, &password).ok();
    assert_eq!(owner.session()["scope"], "TOKEN_SCOPE_FULL");
    assert_eq!(owner.json(&["whoami"])["administrator"]["email"], "owner@example.com");
    let reused = owner.run_with(&with_recovery, &password);
    assert!(reused.code == 1 && reused.stderr.contains("UNAUTHENTICATED"), "{}", reused.stderr);

    // A TOTP code of the next step (the current one was used to confirm) is accepted.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let next = generator.generate(now.as_secs() + 30).to_string();
    let mut with_totp = login.to_vec();
    with_totp.extend(["--totp", &next]);
    owner.run_with(&with_totp, &password).ok();
    assert_eq!(owner.json(&["whoami"])["administrator"]["email"], "owner@example.com");
    // Both flags at once is a usage error.
    let mut both = with_totp.clone();
    both.extend(["--recovery-code", &recovery[1]]);
    assert_eq!(owner.run_with(&both, &password).code, 2);
}

/// `steward completion SHELL` and `steward man`: generated from the grammar, without a
/// configuration directory or a server.
#[test]
fn completion_scripts_and_manual_pages() {
    let steward = |args: &[&str]| {
        let output =
            Command::new(env!("CARGO_BIN_EXE_steward")).args(args).env_clear().output().unwrap();
        Out {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    };
    let bash = steward(&["completion", "bash"]).ok();
    for subcommand in ["admins", "commands", "runs", "service-accounts", "profiles", "completion"] {
        assert!(bash.stdout.contains(subcommand), "{subcommand} in the bash script");
    }
    assert!(bash.stdout.contains("complete -F"), "a bash completion: {}", bash.stdout);
    assert!(bash.stdout.contains("--profile"), "global flags complete too");
    let zsh = steward(&["completion", "zsh"]).ok();
    assert!(zsh.stdout.starts_with("#compdef steward"), "{}", &zsh.stdout[..80]);
    let fish = steward(&["completion", "fish"]).ok();
    assert!(fish.stdout.contains("complete -c steward"), "{}", &fish.stdout[..200]);
    assert_eq!(steward(&["completion", "tcsh"]).code, 2, "an unknown shell is a usage error");

    // roff: past the portable definition of the apostrophe string (`.ie`/`.el`), the page
    // starts with its title request; and groff, when installed, renders it without a warning.
    let is_roff = |text: &str, title: &str| {
        let mut requests =
            text.lines().skip_while(|l| l.starts_with(".ie ") || l.starts_with(".el "));
        let first = requests.next().unwrap_or_default();
        assert!(first.starts_with(&format!(".TH {title} 1 ")), "not a manual page: {first}");
        assert!(text.contains(".SH NAME") && text.contains(".SH SYNOPSIS"), "{text}");
    };
    let page = steward(&["man"]).ok();
    is_roff(&page.stdout, "steward");
    assert!(page.stdout.contains("admins") && page.stdout.contains("completion"));
    let rendered = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(|mut groff| {
            groff.stdin.take().unwrap().write_all(page.stdout.as_bytes()).unwrap();
            groff.wait_with_output().unwrap()
        });
    if let Ok(rendered) = rendered {
        assert!(rendered.status.success() && rendered.stderr.is_empty(), "{rendered:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    steward(&["man", "--out", out.to_str().unwrap()]).ok();
    for (file, title) in [
        ("steward.1", "steward"),
        ("steward-admins.1", "steward-admins"),
        ("steward-admins-list.1", "steward-admins-list"),
        ("steward-runs-watch.1", "steward-runs-watch"),
    ] {
        is_roff(&std::fs::read_to_string(out.join(file)).unwrap(), title);
    }
    let text = std::fs::read_to_string(out.join("steward-commands-run.1")).unwrap();
    assert!(text.contains("exit\\-code"), "every flag is documented: {text}");
}

/// Named profiles: each keeps its own session, server and CA file; a session of one profile
/// is never used by another, and a profile name never reaches outside the directory.
#[test]
fn profiles_keep_sessions_apart() {
    let dev = start_dev(&[]);
    let me = Identity::new(&dev);
    me.accept_and_login(&dev.owner_token, "owner@example.com");
    me.json(&["admins", "create", "--email", "second@example.com", "--role", "read-only"]);
    let token = dev.mailed_token("second@example.com");
    let password = format!("{PASSWORD}\n");

    // A profile that has never signed in does not borrow the default one's session.
    let fresh = me.run(&["--profile", "work", "whoami"]);
    assert!(fresh.code == 1 && fresh.stderr.contains("not signed in"), "{}", fresh.stderr);
    let fresh = me.run_opts(None, &["--profile", "work", "whoami"], "");
    assert!(fresh.code == 1 && fresh.stderr.contains("not signed in"), "{}", fresh.stderr);

    // Signing in with `--profile work` (through STEWARD_PROFILE too) keeps that session apart.
    me.run_with(
        &["--profile", "work", "accept-invite", "--token", &token, "--password-stdin"],
        &password,
    )
    .ok();
    me.run_with(
        &["--profile", "work", "login", "--email", "second@example.com", "--password-stdin"],
        &password,
    )
    .ok();
    let work_file = me.dir.path().join("profiles/work/session.json");
    let work_session: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&work_file).unwrap()).unwrap();
    assert_eq!(work_session["email"], "second@example.com");
    assert_eq!(me.session()["email"], "owner@example.com", "the default session is untouched");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&work_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the profile's session file is private");
        let mode = std::fs::metadata(work_file.parent().unwrap()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "the profile's directory is private");
    }
    // Each profile remembers its server: no --server needed any more.
    let whoami = |profile: &str| {
        let out = me.run_opts(None, &["--profile", profile, "--output", "json", "whoami"], "");
        out.ok().json()["administrator"]["email"].as_str().unwrap().to_string()
    };
    assert_eq!(whoami("work"), "second@example.com");
    assert_eq!(whoami("default"), "owner@example.com");
    let mut by_env = me.command(None, &["--output", "json", "whoami"]);
    let by_env = by_env.env("STEWARD_PROFILE", "work").output().unwrap();
    let by_env: serde_json::Value = serde_json::from_slice(&by_env.stdout).unwrap();
    assert_eq!(by_env["administrator"]["email"], "second@example.com");
    // The profile's role, not the default one's: a Read Only administrator cannot create.
    let refused = me.run_opts(
        None,
        &[
            "--profile",
            "work",
            "admins",
            "create",
            "--email",
            "x@example.com",
            "--role",
            "read-only",
        ],
        "",
    );
    assert!(
        refused.code == 1 && refused.stderr.contains("PERMISSION_DENIED"),
        "{}",
        refused.stderr
    );

    // `profiles list` names them, who is signed in and which is in use; never a token.
    let listed =
        me.run_opts(None, &["--profile", "work", "--output", "json", "profiles", "list"], "");
    let listed = listed.ok().json();
    let rows: Vec<(String, String, bool)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().into(),
                p["email"].as_str().unwrap().into(),
                p["current"] == true,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("default".into(), "owner@example.com".into(), false),
            ("work".into(), "second@example.com".into(), true)
        ]
    );
    assert_eq!(listed[1]["server"], dev.url.as_str());
    let table = me.run_opts(None, &["profiles", "list"], "").ok();
    assert!(table.stdout.contains("work") && table.stdout.contains(&dev.url), "{}", table.stdout);
    let unused =
        me.run_opts(None, &["--profile", "new", "--output", "json", "profiles", "list"], "");
    let unused = unused.ok().json();
    assert_eq!(unused[2]["name"], "new", "the profile in use is listed: {unused}");
    assert_eq!((&unused[2]["current"], &unused[2]["signed_in"]), (&true.into(), &false.into()));

    // A session copied into another profile for another server is not sent anywhere else.
    let elsewhere = me.run_at("http://127.0.0.1:9", &["--profile", "work", "whoami"], "");
    assert!(
        elsewhere.code == 1 && elsewhere.stderr.contains("not signed in"),
        "{}",
        elsewhere.stderr
    );

    // Signing out of one profile leaves the other signed in.
    me.run_opts(None, &["--profile", "work", "logout"], "").ok();
    assert!(!work_file.exists());
    assert_eq!(whoami("default"), "owner@example.com");
    let ended = me.run_opts(None, &["--profile", "work", "whoami"], "");
    assert!(ended.code == 1 && ended.stderr.contains("not signed in"), "{}", ended.stderr);

    // A profile name is never a path.
    for bad in ["../escape", "a/b", "..", "", "x y"] {
        let refused = me.run_with(
            &["--profile", bad, "login", "--email", "a@example.com", "--password-stdin"],
            &password,
        );
        assert_eq!(refused.code, 2, "{bad:?}: {}", refused.stderr);
        assert!(refused.stderr.contains("invalid profile name"), "{}", refused.stderr);
    }
    assert!(!me.dir.path().join("escape").exists() && !me.dir.path().join("profiles/a").exists());
}

/// Runs `steward ARGS...` on a new pseudo-terminal that becomes its controlling terminal
/// (`setsid --ctty`), as a person at a terminal would; `answer` is called with the master side
/// whenever new output arrives and returns what to type, if anything.
fn on_a_terminal(
    identity: &Identity,
    args: &[&str],
    mut answer: impl FnMut(&str, &std::os::fd::OwnedFd) -> Option<String>,
) -> Out {
    use std::io::Read;
    let pty = nix::pty::openpty(None, None).unwrap();
    let program = identity.command(Some(&identity.url), args);
    let mut command = Command::new("setsid");
    command
        .args(["--ctty", "--wait"])
        .arg(program.get_program())
        .args(program.get_args())
        .envs(program.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))));
    for (key, value) in program.get_envs() {
        if value.is_none() {
            command.env_remove(key);
        }
    }
    let mut child = command
        .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave))
        .spawn()
        .unwrap();
    let mut reader = std::fs::File::from(pty.master.try_clone().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        // EIO once the child and its terminal are gone.
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut writer = std::fs::File::from(pty.master.try_clone().unwrap());
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(bytes) => {
                seen.push_str(&String::from_utf8_lossy(&bytes));
                if let Some(typed) = answer(&seen, &pty.master) {
                    writer.write_all(typed.as_bytes()).unwrap();
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("no answer from {args:?} on the terminal: {seen}");
                }
                if child.try_wait().unwrap().is_some() && rx.try_recv().is_err() {
                    break;
                }
            }
        }
    }
    let status = child.wait().unwrap();
    Out { code: status.code().unwrap_or(-1), stdout: seen, stderr: String::new() }
}

/// Waits until the terminal no longer echoes what is typed (the prompt is shown just before
/// echo is turned off), then returns `secret` to type; fails if echo stays on.
fn once_echo_is_off(master: &std::os::fd::OwnedFd, secret: &str) -> String {
    use nix::sys::termios::{tcgetattr, LocalFlags};
    for _ in 0..100 {
        if !tcgetattr(master).unwrap().local_flags.contains(LocalFlags::ECHO) {
            return format!("{secret}\n");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the terminal still echoes while the password is asked for");
}

/// Without `--password-stdin`, a terminal is asked for the password with echo off (a new one
/// twice, and both must match); without a terminal that is a usage error, as before.
#[test]
fn passwords_are_asked_on_a_terminal_with_echo_off() {
    let dev = start_dev(&[]);
    let owner = Identity::new(&dev);

    // Two different new passwords: refused, the invite stays usable.
    let mut typed = 0;
    let differ =
        on_a_terminal(&owner, &["accept-invite", "--token", &dev.owner_token], |seen, pty| {
            let prompts = seen.matches("password: ").count();
            (prompts > typed).then(|| {
                typed = prompts;
                once_echo_is_off(
                    pty,
                    if prompts == 1 { PASSWORD } else { "something else entirely 9" },
                )
            })
        });
    assert_eq!(differ.code, 1, "{}", differ.stdout);
    assert!(differ.stdout.contains("differ"), "{}", differ.stdout);

    let mut typed = 0;
    let accepted =
        on_a_terminal(&owner, &["accept-invite", "--token", &dev.owner_token], |seen, pty| {
            let prompts = seen.matches("password: ").count();
            (prompts > typed).then(|| {
                typed = prompts;
                once_echo_is_off(pty, PASSWORD)
            })
        });
    assert_eq!(accepted.code, 0, "{}", accepted.stdout);
    assert!(accepted.stdout.contains("New password: ") && accepted.stdout.contains("Repeat"));
    assert!(accepted.stdout.contains("invite accepted"), "{}", accepted.stdout);
    assert!(!accepted.stdout.contains(PASSWORD), "the password was echoed: {}", accepted.stdout);

    let mut asked = false;
    let login = on_a_terminal(&owner, &["login", "--email", "owner@example.com"], |seen, pty| {
        (!asked && seen.contains("Password: ")).then(|| {
            asked = true;
            once_echo_is_off(pty, PASSWORD)
        })
    });
    assert_eq!(login.code, 0, "{}", login.stdout);
    assert!(login.stdout.contains("signed in as"), "{}", login.stdout);
    assert!(!login.stdout.contains(PASSWORD), "the password was echoed: {}", login.stdout);
    assert_eq!(owner.json(&["whoami"])["administrator"]["email"], "owner@example.com");

    // A wrong password typed at the terminal is refused like one on stdin.
    let mut asked = false;
    let wrong = on_a_terminal(&owner, &["login", "--email", "owner@example.com"], |seen, pty| {
        (!asked && seen.contains("Password: ")).then(|| {
            asked = true;
            once_echo_is_off(pty, "not the password at all")
        })
    });
    assert!(wrong.code == 1 && wrong.stdout.contains("UNAUTHENTICATED"), "{}", wrong.stdout);

    // Not a terminal, no --password-stdin: a usage error, nothing read or sent.
    for args in [
        &["login", "--email", "owner@example.com"][..],
        &["password", "reset", "--token", "t"][..],
        &["password", "change"][..],
    ] {
        let refused = owner.run_with(args, &format!("{PASSWORD}\n"));
        assert_eq!(refused.code, 2, "{args:?}: {}", refused.stderr);
        assert!(refused.stderr.contains("terminal"), "{}", refused.stderr);
    }
}

/// `commands run --wait` names the run before its output; `--exit-code` passes the script's
/// exit code through; Ctrl-C stops following (exit 130) and says how to re-attach, while the
/// run goes on. Tables fit 120 columns and show the command's display name.
#[test]
fn run_wait_names_the_run_passes_exit_codes_and_survives_ctrl_c() {
    let dev = start_dev(&[]);
    let owner = Identity::new(&dev);
    owner.accept_and_login(&dev.owner_token, "owner@example.com");
    let agent = Agent::start(&dev, &owner);
    let create = |display_name: &str, script: &str| {
        let created = owner.run_with(
            &[
                "--output",
                "json",
                "commands",
                "create",
                "--name",
                display_name,
                "--script",
                "-",
                "--interpreter",
                "sh",
                "--system",
                &agent.system,
            ],
            script,
        );
        id(&name(&created.ok().json())).to_string()
    };
    let seven = create("exits seven after some output", "echo before-exit; exit 7\n");

    let plain = owner.run(&["commands", "run", &seven, "--wait"]);
    assert_eq!(plain.code, 1, "without --exit-code a failed run exits 1: {}", plain.stderr);
    let first = plain.stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("run organizations/") && first.contains("/runs/"),
        "{}",
        plain.stderr
    );
    assert!(plain.stdout.contains("before-exit"), "{}", plain.stdout);
    let passed = owner.run(&["commands", "run", &seven, "--wait", "--exit-code"]);
    assert_eq!(passed.code, 7, "the script's exit code: {}", passed.stderr);
    let run_id = id(passed.stderr.lines().next().unwrap()).to_string();
    let watched = owner.run(&["runs", "watch", &run_id, "--exit-code"]);
    assert_eq!(watched.code, 7, "{}", watched.stderr);
    assert_eq!(owner.run(&["commands", "run", &seven, "--exit-code"]).code, 2, "needs --wait");
    // JSON: the run is the first event.
    let json = owner.run(&["--output", "json", "commands", "run", &seven, "--wait"]);
    let first: serde_json::Value =
        serde_json::from_str(json.stdout.lines().next().unwrap()).unwrap();
    assert!(first["run"]["name"].as_str().unwrap().contains("/runs/"), "{}", json.stdout);

    // Tables: short IDs, the command's display name, at most 120 columns; JSON keeps it all.
    let runs = owner.run(&["runs", "list"]).ok();
    assert!(runs.stdout.contains("exits seven after some output"), "{}", runs.stdout);
    assert!(
        runs.stdout.contains(&run_id) && !runs.stdout.contains("organizations/"),
        "{}",
        runs.stdout
    );
    for list in
        [&["runs", "list"][..], &["commands", "list"], &["systems", "list"], &["audit", "list"]]
    {
        let table = owner.run(list).ok();
        assert!(
            table.stdout.lines().all(|l| l.chars().count() <= 120),
            "{list:?}:\n{}",
            table.stdout
        );
    }
    let full = owner.json(&["runs", "list"]);
    assert!(full[0]["name"].as_str().unwrap().starts_with("organizations/"), "{full}");
    assert!(full[0].get("command_display_name").is_none(), "JSON is unchanged: {full}");

    // Ctrl-C while following: exit 130, the re-attach command, and the run still going.
    let slow = create("slow", "echo started; sleep 60\n");
    let interrupt = |args: &[&str]| {
        let mut child = owner
            .command(Some(&dev.url), args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, "started\n", "the output is being followed");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(130), "{stderr}");
        stderr
    };
    let stderr = interrupt(&["commands", "run", &slow, "--wait"]);
    let run_name = stderr.lines().next().unwrap().strip_prefix("run ").unwrap().to_string();
    assert!(stderr.contains(&format!("steward runs watch {}", id(&run_name))), "{stderr}");
    // Re-attached, the output is shown again from the start; Ctrl-C again leaves it running.
    let again = interrupt(&["runs", "watch", id(&run_name)]);
    assert!(again.contains(&format!("steward runs cancel {}", id(&run_name))), "{again}");
    let still = owner.json(&["runs", "get", &run_name]);
    assert_eq!(still["state"], "RUN_STATE_RUNNING", "the run goes on: {still}");
    owner.run(&["runs", "cancel", &run_name]).ok();
    // Cancelled: the agent killed the script (128 + SIGKILL), and that is its exit code.
    let cancelled = owner.run(&["runs", "watch", id(&run_name), "--exit-code"]);
    assert_eq!(cancelled.code, 137, "{}", cancelled.stderr);
    assert!(cancelled.stderr.contains("RUN_STATE_CANCELLED"), "{}", cancelled.stderr);
    assert_eq!(owner.run(&["runs", "watch", id(&run_name)]).code, 1, "without --exit-code");
}

/// Answers the token prompt with `token` and every password prompt with [`PASSWORD`], each once
/// the terminal no longer echoes.
fn paste_token_then_passwords(
    token: String,
) -> impl FnMut(&str, &std::os::fd::OwnedFd) -> Option<String> {
    let mut answered = 0;
    move |seen, pty| {
        let passwords = seen.matches("password: ").count();
        let prompts = seen.matches("Paste the token from the email: ").count() + passwords;
        (prompts > answered).then(|| {
            answered = prompts;
            once_echo_is_off(pty, if passwords == 0 { &token } else { PASSWORD })
        })
    }
}

/// The token of an invite or reset email never needs the command line: pasted at a terminal
/// prompt with echo off (never shown), from a file, from `STEWARD_LINK_TOKEN`, or as the first
/// line of stdin before the password. `--token` still works, with a warning on a terminal;
/// a wrong token is UNAUTHENTICATED and is not shown either.
#[test]
fn link_tokens_stay_off_the_command_line() {
    let dev = start_dev(&[]);
    let owner = Identity::new(&dev);

    // A wrong token pasted at the prompt: refused, not shown, and the invite stays usable.
    let wrong = "Wr0ngTokenPastedAtThePrompt";
    let refused =
        on_a_terminal(&owner, &["accept-invite"], paste_token_then_passwords(wrong.into()));
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(refused.stdout.contains("UNAUTHENTICATED"), "{}", refused.stdout);
    assert!(!refused.stdout.contains(wrong), "the token was shown: {}", refused.stdout);

    // `--token` on a terminal: a warning, and a wrong one is not repeated in the error.
    let flagged = "Wr0ngTokenOnTheCommandLine";
    let warned = on_a_terminal(
        &owner,
        &["accept-invite", "--token", flagged],
        paste_token_then_passwords(String::new()),
    );
    assert_eq!(warned.code, 1, "{}", warned.stdout);
    assert!(
        warned.stdout.contains("warning: --token is visible to other users"),
        "{}",
        warned.stdout
    );
    assert!(!warned.stdout.contains("Paste the token"), "{}", warned.stdout);
    assert!(warned.stdout.contains("UNAUTHENTICATED"), "{}", warned.stdout);
    assert!(!warned.stdout.contains(flagged), "{}", warned.stdout);
    // Not on a terminal (a script): no warning.
    let quiet = owner.run_with(
        &["accept-invite", "--token", flagged, "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );
    assert_eq!(quiet.code, 1, "{}", quiet.stderr);
    assert!(
        !quiet.stderr.contains("warning") && !quiet.stderr.contains(flagged),
        "{}",
        quiet.stderr
    );

    // The real token pasted at the prompt, with echo off: accepted, never on screen.
    let accepted = on_a_terminal(
        &owner,
        &["accept-invite"],
        paste_token_then_passwords(dev.owner_token.clone()),
    );
    assert_eq!(accepted.code, 0, "{}", accepted.stdout);
    assert!(accepted.stdout.contains("Paste the token from the email: "), "{}", accepted.stdout);
    assert!(accepted.stdout.contains("invite accepted"), "{}", accepted.stdout);
    assert!(
        !accepted.stdout.contains(&dev.owner_token),
        "the token was shown: {}",
        accepted.stdout
    );
    assert!(!accepted.stdout.contains("warning"), "{}", accepted.stdout);
    let password = format!("{PASSWORD}\n");
    owner.run_with(&["login", "--email", "owner@example.com", "--password-stdin"], &password).ok();

    // From a file (the whole pasted link is fine too).
    owner.run(&["admins", "create", "--email", "files@example.com", "--role", "read-only"]).ok();
    let invite = dev.mailed_token("files@example.com");
    let file = owner.dir.path().join("token.txt");
    std::fs::write(&file, format!("https://console.invalid/set-password?token={invite}\n"))
        .unwrap();
    let from_file = owner.run_with(
        &["accept-invite", "--token-file", file.to_str().unwrap(), "--password-stdin"],
        &password,
    );
    let from_file = from_file.ok();
    assert!(!from_file.stdout.contains(&invite) && !from_file.stderr.contains(&invite));
    let files = Identity::new(&dev);
    files.run_with(&["login", "--email", "files@example.com", "--password-stdin"], &password).ok();
    let missing = owner.run_with(
        &["accept-invite", "--token-file", "/nonexistent/token", "--password-stdin"],
        &password,
    );
    assert!(missing.code == 1 && missing.stderr.contains("token file"), "{}", missing.stderr);

    // From STEWARD_LINK_TOKEN.
    owner.run(&["admins", "create", "--email", "env@example.com", "--role", "read-only"]).ok();
    let invite = dev.mailed_token("env@example.com");
    let mut by_env = Identity::new(&dev);
    by_env.env.push(("STEWARD_LINK_TOKEN", invite.clone()));
    let accepted = by_env.run_with(&["accept-invite", "--password-stdin"], &password).ok();
    assert!(!accepted.stdout.contains(&invite) && !accepted.stderr.contains(&invite));
    Identity::new(&dev)
        .run_with(&["login", "--email", "env@example.com", "--password-stdin"], &password)
        .ok();

    // A password reset: the token, then the new password, on stdin.
    files.run(&["password", "request-reset", "--email", "files@example.com"]).ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    let reset = loop {
        let newest = dev.mailed_token("files@example.com");
        if newest != invite_of(&file) {
            break newest;
        }
        assert!(Instant::now() < deadline, "no reset email");
        std::thread::sleep(Duration::from_millis(100));
    };
    let new_password = "a different long passphrase 9";
    let done = files.run_with(
        &["password", "reset", "--password-stdin"],
        &format!("{reset}\n{new_password}\n"),
    );
    let done = done.ok();
    assert!(!done.stdout.contains(&reset) && !done.stderr.contains(&reset));
    files
        .run_with(
            &["login", "--email", "files@example.com", "--password-stdin"],
            &format!("{new_password}\n"),
        )
        .ok();

    // Nowhere to read the token from (no terminal, no --password-stdin): a usage error that
    // names the ways to give it.
    let usage = owner.run(&["password", "reset"]);
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    assert!(
        usage.stderr.contains("--token-file") && usage.stderr.contains("STEWARD_LINK_TOKEN"),
        "{}",
        usage.stderr
    );
}

/// The token in a file written by [`link_tokens_stay_off_the_command_line`].
fn invite_of(file: &Path) -> String {
    token_in(&std::fs::read_to_string(file).unwrap()).unwrap()
}
