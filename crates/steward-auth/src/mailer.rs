//! Outgoing email: invite and password-reset links.
//!
//! With `email.smtp_url` set, messages go through lettre's async SMTP transport (rustls). With it
//! empty (dev mode), each message is written as an `.eml` file under `{data_dir}/mail/` (staged
//! in `mail/.partial/` and renamed, so readers never see a partial file), and the log names the
//! file to open. A file is named after its email's `mail_id` (a digest of the outbox message it
//! comes from), so delivering the same message again replaces the file instead of adding a
//! second one: the recipient sees one email, with the newest link (the one that works). Over
//! SMTP a message whose acknowledgement was lost (the service died between the server's answer
//! and the outbox's bookkeeping) arrives twice; only the newer link works. The link itself is never logged, in dev mode either: tokens stay
//! out of logs at every level (the link is in the file).
//!
//! Each email carries the link (`{auth.console_url}/set-password?token=...` or
//! `/reset-password?token=...`) and the `steward` command that does the same from a terminal
//! (`steward accept-invite`, `steward password reset`), with the token on a line of its own to
//! paste when the command asks for it (then it asks for the new password). The command never
//! carries the token: on a command line it would be visible to every user of the machine and
//! kept in shell history. While `auth.console_url` is a placeholder (a host under `.invalid`,
//! the default: no web console ships yet) the email leads with the command and says the link
//! has no console behind it.
//!
//! Bodies are plain text in 7bit encoding so that the link and the command appear verbatim in
//! the message (and the file): lines are kept under 74 characters and characters outside ASCII
//! in names are shown as `?` in the body (in full in the RFC 2047 encoded subject). Only a
//! console URL longer than about 30 characters makes the link line too long for 7bit; the body
//! then falls back to quoted-printable, which mail clients decode transparently.

use std::path::PathBuf;

use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use steward_runtime::config::{Config, EmailConfig};
use steward_runtime::{ApiError, ApiResult};

#[derive(Clone)]
enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    File(PathBuf),
}

/// Sends the service's emails.
#[derive(Clone)]
pub struct Mailer {
    transport: Transport,
    from: Mailbox,
    console_url: String,
    /// `auth.console_url` names no console (see the module documentation).
    no_console: bool,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.transport {
            Transport::Smtp(_) => "smtp",
            Transport::File(..) => "file",
        };
        f.debug_struct("Mailer").field("transport", &kind).finish_non_exhaustive()
    }
}

/// An invite email's content.
#[derive(Clone, Debug)]
pub struct Invite<'a> {
    /// Recipient.
    pub to: &'a str,
    /// The organization's display name.
    pub organization: &'a str,
    /// Who invited, if anyone.
    pub inviter: &'a str,
    /// The link token.
    pub token: &'a str,
    /// Hours until the link expires.
    pub valid_hours: u64,
    /// The same for every delivery of one outbox message (see the module documentation).
    pub mail_id: &'a str,
}

fn ascii(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii() && !c.is_ascii_control() { c } else { '?' }).collect()
}

impl Mailer {
    /// The mailer configured by `config.email` (file transport under the data directory when no
    /// SMTP URL is set).
    pub fn from_config(config: &Config) -> ApiResult<Self> {
        let EmailConfig { smtp_url, from } = &config.email;
        let from: Mailbox = from
            .parse()
            .map_err(|e| ApiError::internal(format!("email.from is not an address: {e}")))?;
        let transport = if smtp_url.is_empty() {
            let dir = config.database.data_dir.join("mail");
            std::fs::create_dir_all(&dir)
                .map_err(|e| ApiError::internal(format!("cannot create {}: {e}", dir.display())))?;
            Transport::File(dir)
        } else {
            let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp_url)
                .map_err(|e| ApiError::internal(format!("email.smtp_url is invalid: {e}")))?
                .build();
            Transport::Smtp(transport)
        };
        Ok(Self {
            transport,
            from,
            console_url: config.auth.console_url.trim_end_matches('/').to_string(),
            no_console: config.auth.console_is_placeholder(),
        })
    }

    /// The part of a body that says how to use the token, ending with a blank line: the
    /// console link after `link_intro` and the `steward` command (`subcommand`, e.g.
    /// `accept-invite`) after `cli_intro`, followed by the token on its own line to paste when
    /// the command asks; without a console, the command first.
    fn how_to_complete(
        &self,
        (path, subcommand): (&str, &str),
        token: &str,
        link_intro: &str,
        cli_intro: &str,
    ) -> String {
        let link = format!("{}/{path}?token={token}", self.console_url);
        let command = format!(
            "  steward {subcommand}\r\n\r\n\
             and paste this token when it asks for it (then it asks for the\r\n\
             new password):\r\n\r\n  {token}\r\n\r\n\
             Point steward at your Steward server with --server URL (or set\r\n\
             STEWARD_SERVER); without either it asks http://127.0.0.1:50051.\r\n"
        );
        if self.no_console {
            format!(
                "{cli_intro}\r\n\r\n{command}\r\n\
                 No web console ships with Steward yet; this link is where one\r\n\
                 would take you:\r\n{link}\r\n\r\n"
            )
        } else {
            format!(
                "{link_intro}\r\n\r\n{link}\r\n\r\n\
                 or with the Steward command line: run\r\n\r\n{command}\r\n"
            )
        }
    }

    /// Sends an invite with its set-password link and `steward accept-invite` command.
    pub async fn send_invite(&self, invite: &Invite<'_>) -> ApiResult<()> {
        let by = if invite.inviter.is_empty() {
            String::new()
        } else {
            format!("\r\nby {}", ascii(invite.inviter))
        };
        let complete = self.how_to_complete(
            ("set-password", "accept-invite"),
            invite.token,
            "Set your password here to activate your account:",
            "Set your password with the Steward command line to activate\r\n\
             your account: run",
        );
        let body = format!(
            "Hello,\r\n\r\nYou have been invited{by}\r\nto administer this organization on Steward:\r\n\
             {org}\r\n\r\n{complete}\
             The link and the token work once and expire in {hours} hours.\r\n\
             If you did not expect this email, you can ignore it.\r\n",
            org = ascii(invite.organization),
            hours = invite.valid_hours,
        );
        let subject = format!("You're invited to {} on Steward", invite.organization);
        self.send(invite.to, &subject, body, ("invite", invite.mail_id)).await
    }

    /// Sends a password-reset link and its `steward password reset` command; `mail_id` as
    /// [`Invite::mail_id`].
    pub async fn send_reset(
        &self,
        to: &str,
        organization: &str,
        (token, valid_hours): (&str, u64),
        mail_id: &str,
    ) -> ApiResult<()> {
        let complete = self.how_to_complete(
            ("reset-password", "password reset"),
            token,
            "Choose a new password here:",
            "Choose a new password with the Steward command line: run",
        );
        let body = format!(
            "Hello,\r\n\r\nSomeone asked to reset the password of your Steward account\r\n\
             at this organization:\r\n{org}\r\n\r\n{complete}\
             The link and the token work once and expire in {valid_hours} hours.\r\n\
             If you did not ask for this, ignore this email:\r\n\
             your password stays as it is.\r\n",
            org = ascii(organization),
        );
        self.send(to, "Reset your Steward password", body, ("password reset", mail_id)).await
    }

    async fn send(
        &self,
        to: &str,
        subject: &str,
        body: String,
        (kind, mail_id): (&str, &str),
    ) -> ApiResult<()> {
        let to_box: Mailbox =
            to.parse().map_err(|_| ApiError::invalid("email", "is not a valid email address"))?;
        // `Body::new_with_encoding` checks what lettre's builder would otherwise panic on.
        let body = Body::new_with_encoding(body.clone(), ContentTransferEncoding::SevenBit)
            .unwrap_or_else(|_| {
                tracing::debug!(kind, "email body does not fit 7bit, using quoted-printable");
                Body::new(body)
            });
        let part = SinglePart::builder().header(ContentType::TEXT_PLAIN).body(body);
        // One Message-ID per outbox message: a message delivered twice is recognisably one.
        let id = crate::secrets::digest(mail_id);
        let message_id = format!("<{}@{}>", id.get(..32).unwrap_or(&id), self.from.email.domain());
        let message = Message::builder()
            .message_id(Some(message_id))
            .from(self.from.clone())
            .to(to_box)
            .subject(subject)
            .singlepart(part)
            .map_err(|e| ApiError::internal(format!("cannot build email: {e}")))?;
        match &self.transport {
            Transport::Smtp(smtp) => {
                smtp.send(message).await.map_err(|e| {
                    tracing::warn!(error = %e, kind, "smtp delivery failed");
                    ApiError::Unavailable("email delivery failed, retry later".into())
                })?;
                tracing::info!(kind, "email sent");
            }
            Transport::File(dir) => {
                // Written aside, then renamed into place: a reader never sees half a message.
                let partial = dir.join(".partial");
                let staged = partial.join(format!("{}.eml", uuid::Uuid::new_v4()));
                // One file per outbox message: a repeated delivery replaces it.
                let path = dir.join(format!("{}.eml", id.get(..32).unwrap_or(&id)));
                let io =
                    |e: std::io::Error| ApiError::internal(format!("cannot write email file: {e}"));
                tokio::fs::create_dir_all(&partial).await.map_err(io)?;
                // The message holds a live link: readable by the service's user only (0600),
                // set at creation so it is never readable by others, not even briefly.
                let mut options = tokio::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                options.mode(0o600);
                let mut file = options.open(&staged).await.map_err(io)?;
                tokio::io::AsyncWriteExt::write_all(&mut file, &message.formatted())
                    .await
                    .map_err(io)?;
                tokio::io::AsyncWriteExt::flush(&mut file).await.map_err(io)?;
                drop(file);
                tokio::fs::rename(&staged, &path).await.map_err(io)?;
                tracing::info!(kind, to, path = %path.display(), "dev mode: email written to file, open it for the link");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The only `.eml` file under `dir/mail`, with its mode checked.
    fn only_mail(dir: &std::path::Path) -> String {
        let entries: Vec<_> = std::fs::read_dir(dir.join("mail"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
            .collect();
        assert_eq!(entries.len(), 1);
        let entry = &entries[0];
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "mail files hold live links: owner-only");
        }
        std::fs::read_to_string(entry.path()).unwrap()
    }

    fn mailer(dir: &std::path::Path, console_url: Option<&str>) -> Mailer {
        let mut config = Config::default();
        config.database.data_dir = dir.to_path_buf();
        if let Some(url) = console_url {
            config.auth.console_url = url.into();
        }
        Mailer::from_config(&config).unwrap()
    }

    async fn invite(mailer: &Mailer, token: &str) {
        mailer
            .send_invite(&Invite {
                to: "ada@example.com",
                organization: "Zürich Labs",
                inviter: "grace@example.com",
                token,
                valid_hours: 72,
                mail_id: token,
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn dev_mail_files_carry_the_link_and_the_command_verbatim() {
        let dir = tempfile::tempdir().unwrap();
        let token = crate::secrets::new_link_token();
        invite(&mailer(dir.path(), Some("http://localhost:8080")), &token).await;
        let text = only_mail(dir.path());
        let link = format!("\r\nhttp://localhost:8080/set-password?token={token}\r\n");
        let command = "\r\n  steward accept-invite\r\n";
        let pasted = format!("\r\n  {token}\r\n");
        assert!(text.contains(&link), "{text}");
        assert!(text.contains(command), "{text}");
        assert!(text.contains(&pasted), "the token on its own line: {text}");
        assert!(!text.contains("--token"), "never on the command line: {text}");
        assert!(text.find(&link) < text.find(command), "a console comes first: {text}");
        assert!(text.find(command) < text.find(&pasted), "{text}");
        assert!(text.contains("paste this token when it asks"), "{text}");
        assert!(!text.contains("No web console"), "{text}");
        assert!(text.contains("with --server URL (or set\r\nSTEWARD_SERVER)"), "{text}");
        assert!(text.contains("Content-Transfer-Encoding: 7bit"), "{text}");
        assert!(text.contains("by grace@example.com\r\n"), "{text}");
        assert!(text.contains("\r\nZ?rich Labs\r\n"), "{text}");
        assert!(text.lines().all(|l| l.len() < 74), "{text}");
    }

    // The default console URL is a placeholder: the command leads, the link stays (with its
    // `token=`) and the email says no console serves it.
    #[tokio::test]
    async fn without_a_console_the_command_leads() {
        let dir = tempfile::tempdir().unwrap();
        let token = crate::secrets::new_link_token();
        invite(&mailer(dir.path(), None), &token).await;
        let text = only_mail(dir.path());
        let link = format!("\r\nhttps://console.invalid/set-password?token={token}\r\n");
        let command = "\r\n  steward accept-invite\r\n";
        let pasted = format!("\r\n  {token}\r\n");
        assert!(text.contains(&link), "{text}");
        assert!(text.contains(command), "{text}");
        assert!(!text.contains("--token"), "never on the command line: {text}");
        assert!(text.find(command) < text.find(&pasted), "{text}");
        assert!(text.find(&pasted) < text.find(&link), "the command comes first: {text}");
        assert!(text.contains("No web console ships with Steward yet"), "{text}");
        assert!(text.contains("Content-Transfer-Encoding: 7bit"), "{text}");
        assert!(text.lines().all(|l| l.len() < 74), "{text}");
    }

    // A delivery repeated (the service died before it could record the first) replaces the
    // file: one email, carrying the newer link. Another message is another file.
    #[tokio::test]
    async fn a_repeated_delivery_replaces_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mailer = mailer(dir.path(), None);
        let send = |token: &'static str, mail_id: &'static str| {
            let mailer = mailer.clone();
            async move {
                let invite = Invite {
                    to: "ada@example.com",
                    organization: "Acme",
                    inviter: "",
                    token,
                    valid_hours: 72,
                    mail_id,
                };
                mailer.send_invite(&invite).await.unwrap();
            }
        };
        let message_id = |text: &str| {
            let line = text.lines().find(|l| l.to_ascii_lowercase().starts_with("message-id:"));
            line.expect("a Message-ID header").to_string()
        };
        send("first-link-token", "message-1").await;
        let first_id = message_id(&only_mail(dir.path()));
        assert!(first_id.ends_with("@steward.local>"), "the sender's domain: {first_id}");
        send("second-link-token", "message-1").await;
        let text = only_mail(dir.path());
        assert!(text.contains("second-link-token") && !text.contains("first-link-token"));
        assert_eq!(message_id(&text), first_id, "one message, one Message-ID");
        send("third-link-token", "message-2").await;
        let files: Vec<_> = std::fs::read_dir(dir.path().join("mail")).unwrap().flatten().collect();
        let files: Vec<_> =
            files.iter().filter(|e| e.path().extension().is_some_and(|x| x == "eml")).collect();
        assert_eq!(files.len(), 2);
        let ids: std::collections::HashSet<String> =
            files.iter().map(|e| message_id(&std::fs::read_to_string(e.path()).unwrap())).collect();
        assert_eq!(ids.len(), 2, "another message, another Message-ID: {ids:?}");
    }

    #[tokio::test]
    async fn reset_mail_carries_the_reset_command() {
        for console in [None, Some("https://console.example.com")] {
            let dir = tempfile::tempdir().unwrap();
            let token = format!("-{}", crate::secrets::new_link_token());
            mailer(dir.path(), console)
                .send_reset("ada@example.com", "Acme", (&token, 72), &token)
                .await
                .unwrap();
            let text = only_mail(dir.path());
            let base = console.unwrap_or("https://console.invalid");
            assert!(text.contains(&format!("{base}/reset-password?token={token}\r\n")), "{text}");
            // The command, then the token (which may start with `-`) on its own line.
            let command = "\r\n  steward password reset\r\n";
            let pasted = format!("\r\n  {token}\r\n");
            assert!(text.contains(command) && text.contains(&pasted), "{text}");
            assert!(text.find(command) < text.find(&pasted), "{text}");
            assert!(!text.contains("--token"), "{text}");
            assert_eq!(text.contains("No web console"), console.is_none(), "{text}");
            assert!(text.contains("expire in 72 hours"), "{text}");
            assert!(text.lines().all(|l| l.len() < 74), "{text}");
        }
    }
}
