//! Email over real SMTP: an `aiosmtpd` server (PyPI) receives the invites the services send
//! through lettre, and the links in them work.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use steward_proto::admin::v1::organization_service_client::OrganizationServiceClient;
use steward_proto::admin::v1::{
    Administrator, CreateAdministratorRequest, CreateOrganizationRequest, Organization, Role,
};
use steward_proto::auth::v1::{
    AcceptInviteRequest, RequestPasswordResetRequest, ResetPasswordRequest,
};
use steward_server::ServiceKind;
use steward_storage::testing::Backend;

use crate::harness::{postgres_available, Stack, PASSWORD};

/// The sink's handler: aiosmtpd's Maildir handler that, while the file `hold` exists, keeps its
/// "250 OK" back after storing a message (the moment a sender dies in, knowing nothing).
const HOLDING_HANDLER: &str = r#"
import asyncio, os
from aiosmtpd.handlers import Mailbox

class Holding(Mailbox):
    def __init__(self, mail_dir, hold):
        super().__init__(mail_dir)
        self.hold = hold

    @classmethod
    def from_cli(cls, parser, *args):
        return cls(args[0], args[1])

    async def handle_DATA(self, server, session, envelope):
        answer = await super().handle_DATA(server, session, envelope)
        while os.path.exists(self.hold):
            await asyncio.sleep(0.05)
        return answer
"#;

/// An SMTP server storing what it receives in a Maildir.
struct SmtpSink {
    child: Child,
    port: u16,
    maildir: tempfile::TempDir,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SmtpSink {
    fn spawn(port: u16, maildir: &Path) -> Child {
        std::fs::write(maildir.join("holding.py"), HOLDING_HANDLER).unwrap();
        Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c"])
            .arg("holding.Holding")
            .arg(maildir.join("box"))
            .arg(maildir.join("hold"))
            .env("PYTHONPATH", maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with aiosmtpd (pip install aiosmtpd)")
    }

    async fn start() -> Self {
        let maildir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Self::spawn(port, maildir.path());
        // Owned by the sink at once, so its Drop reaps the process on every path.
        let sink = Self { child, port, maildir };
        sink.listening().await;
        sink
    }

    async fn listening(&self) {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("aiosmtpd did not start on port {}", self.port);
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server process.
    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Kills the server (SIGKILL).
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts the server again on the same port and Maildir.
    async fn restart(&mut self) {
        self.child = Self::spawn(self.port, self.maildir.path());
        self.listening().await;
    }

    /// Whether the server keeps its answer to a message back (after storing it).
    fn hold(&self, on: bool) {
        let hold = self.maildir.path().join("hold");
        if on {
            std::fs::write(hold, b"").unwrap();
        } else {
            std::fs::remove_file(hold).unwrap();
        }
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    fn messages(dir: &Path) -> Vec<String> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir.join("box/new"))
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        paths.sort();
        paths.iter().filter_map(|p| std::fs::read_to_string(p).ok()).collect()
    }

    /// Waits for the message addressed to `email`.
    async fn message_to(&self, email: &str) -> String {
        self.message_to_with(email, "").await
    }

    /// Waits for the message addressed to `email` that contains `text`.
    async fn message_to_with(&self, email: &str, text: &str) -> String {
        for _ in 0..300 {
            let found = Self::messages(self.maildir.path()).into_iter().find(|m| {
                m.contains(text)
                    && m.lines()
                        .any(|l| l.to_ascii_lowercase().starts_with("to:") && l.contains(email))
            });
            if let Some(message) = found {
                return message;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no SMTP message for {email}");
    }
}

fn header<'a>(message: &'a str, name: &str) -> &'a str {
    message
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(':')))
        .map(str::trim)
        .unwrap_or_default()
}

async fn invites_travel_over_smtp(backend: Backend) {
    let smtp = SmtpSink::start().await;
    let url = smtp.url();
    let stack = Stack::start_with(backend, |config| {
        config.email.smtp_url = url;
        config.email.from = "Steward <steward@example.org>".into();
        config.auth.console_url = "https://console.example".into();
    })
    .await;

    let owner_email = format!("owner-{}@example.com", uuid::Uuid::new_v4().simple());
    let created = OrganizationServiceClient::new(stack.internal().await)
        .create_organization(CreateOrganizationRequest {
            organization: Some(Organization {
                display_name: "Globex".into(),
                ..Default::default()
            }),
            owner_email: owner_email.clone(),
            request_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let org = created.organization.unwrap().name;

    let message = smtp.message_to(&owner_email).await;
    assert!(header(&message, "From").contains("steward@example.org"), "{message}");
    assert!(header(&message, "Subject").contains("Globex"), "{message}");
    assert!(message.contains("https://console.example/set-password?token="), "{message}");
    assert!(!stack.mail_dir().exists(), "with SMTP configured nothing is written as files");
    let token = steward_server::extract_token(&message).unwrap();
    // A console is configured: its link first, then the command that does the same and the
    // token to paste when it asks (never on the command line).
    let command = "  steward accept-invite";
    assert!(message.lines().any(|l| l.trim_end() == command), "{message}");
    assert!(message.lines().any(|l| l.trim_end() == format!("  {token}")), "{message}");
    assert!(!message.contains("--token"), "{message}");
    assert!(message.find("set-password?token=") < message.find(command), "{message}");
    assert!(!message.contains("No web console"), "{message}");
    let auth = stack.client_for(ServiceKind::Auth).await;
    auth.auth()
        .accept_invite(AcceptInviteRequest { token: token.clone(), password: PASSWORD.into() })
        .await
        .unwrap();
    let tokens = stack.sign_in(&owner_email, PASSWORD).await;
    let owner = stack.client().await.with_token(&tokens.access_token).unwrap();

    // The invite of a Command Runner names the organization and the inviter; its link works.
    let runner_email = format!("helpdesk-{}@example.com", uuid::Uuid::new_v4().simple());
    owner
        .admin()
        .create_administrator(CreateAdministratorRequest {
            parent: org,
            administrator: Some(Administrator {
                email: runner_email.clone(),
                role: Role::CommandRunner as i32,
                ..Default::default()
            }),
            request_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap();
    let message = smtp.message_to(&runner_email).await;
    assert!(message.contains("Globex"), "{message}");
    assert!(message.contains(&owner_email), "the inviter is named: {message}");
    let token = steward_server::extract_token(&message).unwrap();
    auth.auth()
        .accept_invite(AcceptInviteRequest { token: token.clone(), password: PASSWORD.into() })
        .await
        .unwrap();
    stack.sign_in(&runner_email, PASSWORD).await;
    // The link is single-use.
    let reused =
        auth.auth().accept_invite(AcceptInviteRequest { token, password: PASSWORD.into() }).await;
    assert_eq!(reused.unwrap_err().code(), tonic::Code::Unauthenticated);

    // A password reset travels the same way, with its link and its command.
    auth.auth()
        .request_password_reset(RequestPasswordResetRequest {
            email: runner_email.clone(),
            organization: String::new(),
        })
        .await
        .unwrap();
    let message = smtp.message_to_with(&runner_email, "reset-password?token=").await;
    assert!(header(&message, "Subject").contains("Reset"), "{message}");
    let token = steward_server::extract_token(&message).unwrap();
    assert!(message.contains(&format!("https://console.example/reset-password?token={token}")));
    assert!(message.lines().any(|l| l.trim_end() == "  steward password reset"), "{message}");
    assert!(message.lines().any(|l| l.trim_end() == format!("  {token}")), "{message}");
    assert!(!message.contains("--token"), "{message}");
    let new_password = "a different long passphrase 9";
    auth.auth()
        .reset_password(ResetPasswordRequest { token, new_password: new_password.into() })
        .await
        .unwrap();
    stack.sign_in(&runner_email, new_password).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_travel_over_smtp_sqlite() {
    invites_travel_over_smtp(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_travel_over_smtp_postgres() {
    if postgres_available() {
        invites_travel_over_smtp(Backend::Postgres).await;
    }
}

/// How many messages the sink holds for each of `emails`.
fn received(dir: &Path, emails: &[String]) -> Vec<(String, usize)> {
    let messages = SmtpSink::messages(dir);
    emails
        .iter()
        .map(|email| {
            let to = |m: &String| {
                m.lines().any(|l| l.to_ascii_lowercase().starts_with("to:") && l.contains(email))
            };
            (email.clone(), messages.iter().filter(|m| to(m)).count())
        })
        .collect()
}

async fn invite(owner: &steward_proto::client::Steward, org: &str, count: usize) -> Vec<String> {
    let mut calls = tokio::task::JoinSet::new();
    let mut emails = Vec::new();
    for _ in 0..count {
        let email = format!("invitee-{}@example.com", uuid::Uuid::new_v4().simple());
        emails.push(email.clone());
        let (owner, parent) = (owner.clone(), org.to_string());
        calls.spawn(async move {
            owner
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
        created.unwrap().expect("acknowledged");
    }
    emails
}

/// A stack sending mail to `smtp` with its owner signed in; returns the organization and the
/// owner's client.
async fn smtp_stack(
    backend: Backend,
    smtp: &SmtpSink,
) -> (Stack, String, steward_proto::client::Steward) {
    smtp_stack_of(backend, smtp, false).await
}

/// As [`smtp_stack`]; `split` runs the services as three servers (so auth can be stopped).
async fn smtp_stack_of(
    backend: Backend,
    smtp: &SmtpSink,
    split: bool,
) -> (Stack, String, steward_proto::client::Steward) {
    let url = smtp.url();
    let configure = |config: &mut steward_runtime::config::Config| {
        config.email.smtp_url = url;
        // Short, so a delivery stuck on a hung server is abandoned within seconds; long
        // enough that no delivery on a loaded machine is abandoned after the server took it.
        config.outbox.lease_secs = 6;
    };
    let stack = if split {
        Stack::start_split_with(backend, configure).await
    } else {
        Stack::start_with(backend, configure).await
    };
    let owner_email = format!("owner-{}@example.com", uuid::Uuid::new_v4().simple());
    let created = OrganizationServiceClient::new(stack.internal().await)
        .create_organization(CreateOrganizationRequest {
            organization: Some(Organization {
                display_name: "Globex".into(),
                ..Default::default()
            }),
            owner_email: owner_email.clone(),
            request_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let org = created.organization.unwrap().name;
    let token = steward_server::extract_token(&smtp.message_to(&owner_email).await).unwrap();
    let auth = stack.client_for(ServiceKind::Auth).await;
    auth.auth()
        .accept_invite(AcceptInviteRequest { token, password: PASSWORD.into() })
        .await
        .unwrap();
    let tokens = stack.sign_in(&owner_email, PASSWORD).await;
    let owner = stack.client().await.with_token(&tokens.access_token).unwrap();
    (stack, org, owner)
}

// Two full replicas relay the same outboxes to one SMTP server, where every delivery is a
// message of its own: each invite arrives exactly once.
async fn each_invite_arrives_once_from_two_replicas(backend: Backend) {
    let smtp = SmtpSink::start().await;
    let (mut stack, org, owner) = smtp_stack(backend, &smtp).await;
    let replica = stack.add_replica().await;
    let other = stack.client_at(&replica).await.with_token(&owner.access_token().unwrap()).unwrap();
    let mut invited = invite(&owner, &org, 10).await;
    invited.extend(invite(&other, &org, 10).await);
    crate::faults::invites_drained(&stack).await;
    let counts = received(smtp.maildir.path(), &invited);
    let wrong: Vec<_> = counts.iter().filter(|(_, n)| *n != 1).collect();
    assert!(wrong.is_empty(), "each invite once: {wrong:?} of {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invite_arrives_once_from_two_replicas_sqlite() {
    each_invite_arrives_once_from_two_replicas(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invite_arrives_once_from_two_replicas_postgres() {
    if postgres_available() {
        each_invite_arrives_once_from_two_replicas(Backend::Postgres).await;
    }
}

// The SMTP server hangs with a delivery in progress, then is killed while invites are queued,
// and comes back on the same port: each invite arrives exactly once, none is lost.
async fn each_invite_arrives_once_across_an_smtp_server_kill(backend: Backend) {
    let mut smtp = SmtpSink::start().await;
    let (stack, org, owner) = smtp_stack(backend, &smtp).await;
    let mut invited = invite(&owner, &org, 5).await;
    for email in &invited {
        smtp.message_to(email).await;
    }
    // Hung: the relay's next delivery connects and waits for a greeting that never comes.
    smtp.signal("STOP");
    invited.extend(invite(&owner, &org, 10).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    smtp.kill();
    let queued = crate::faults::outbox_pending(&stack, ServiceKind::Auth, "auth_mail_outbox").await;
    assert!(queued > 0, "invites were waiting when the server died");
    // Down for a while: deliveries fail and back off.
    tokio::time::sleep(Duration::from_secs(1)).await;
    smtp.restart().await;

    crate::faults::invites_drained(&stack).await;
    let counts = received(smtp.maildir.path(), &invited);
    let wrong: Vec<_> = counts.iter().filter(|(_, n)| *n != 1).collect();
    assert!(wrong.is_empty(), "each invite once: {wrong:?} of {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invite_arrives_once_across_an_smtp_server_kill_sqlite() {
    each_invite_arrives_once_across_an_smtp_server_kill(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invite_arrives_once_across_an_smtp_server_kill_postgres() {
    if postgres_available() {
        each_invite_arrives_once_across_an_smtp_server_kill(Backend::Postgres).await;
    }
}

// SMTP cannot send exactly once: auth dies after the server took an invite (the server holds
// its answer back meanwhile), before the relay could delete the outbox row, so the restarted
// relay sends it again. The two copies are one message: the same Message-ID, the same link, and
// that link works (before, the second copy carried a new link and the first one's was dead).
async fn a_message_sent_again_after_a_crash_is_the_same_message(backend: Backend) {
    let smtp = SmtpSink::start().await;
    let (mut stack, org, owner) = smtp_stack_of(backend, &smtp, true).await;
    smtp.hold(true);
    let email = invite(&owner, &org, 1).await.remove(0);
    smtp.message_to(&email).await;
    stack.stop_auth().await;
    smtp.hold(false);
    stack.start_auth().await;
    let mut copies = Vec::new();
    for _ in 0..600 {
        copies = SmtpSink::messages(smtp.maildir.path())
            .into_iter()
            .filter(|m| {
                m.lines().any(|l| l.to_ascii_lowercase().starts_with("to:") && l.contains(&email))
            })
            .collect();
        if copies.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(copies.len(), 2, "the restarted relay sent the invite again");
    let id = |m: &str| header(m, "Message-ID").to_string();
    assert!(id(&copies[0]).starts_with('<'), "{}", copies[0]);
    assert_eq!(id(&copies[0]), id(&copies[1]), "one message, one Message-ID");
    let tokens: Vec<String> =
        copies.iter().map(|m| steward_server::extract_token(m).unwrap()).collect();
    assert_eq!(tokens[0], tokens[1], "one message, one link");
    let auth = stack.client_for(ServiceKind::Auth).await;
    auth.auth()
        .accept_invite(AcceptInviteRequest { token: tokens[0].clone(), password: PASSWORD.into() })
        .await
        .expect("the first copy's link works");
    stack.sign_in(&email, PASSWORD).await;
    crate::faults::invites_drained(&stack).await;
    assert_eq!(
        received(smtp.maildir.path(), std::slice::from_ref(&email)),
        [(email, 2)],
        "no third copy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_again_after_a_crash_is_the_same_message_sqlite() {
    a_message_sent_again_after_a_crash_is_the_same_message(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_again_after_a_crash_is_the_same_message_postgres() {
    if postgres_available() {
        a_message_sent_again_after_a_crash_is_the_same_message(Backend::Postgres).await;
    }
}
