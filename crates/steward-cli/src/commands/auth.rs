//! Invites, sign-in and sign-out, the profile, passwords and MFA.

use std::path::PathBuf;

use serde_json::json;
use steward_proto::admin::v1::{GetProfileRequest, UpdateProfileRequest};
use steward_proto::auth::v1::{
    sign_in_response, verify_mfa_request, AcceptInviteRequest, BeginMfaEnrollmentRequest,
    ChangePasswordRequest, ConfirmMfaEnrollmentRequest, RequestPasswordResetRequest,
    ResetPasswordRequest, SignInRequest, SignOutRequest, TokenScope, TokenSet, VerifyMfaRequest,
};

use crate::cli::{
    AcceptInvite, Format, LinkToken, Login, MfaCommand, PasswordCommand, Profile, LINK_TOKEN_VAR,
};
use crate::context::{api_key_is_set, Context, API_KEY_VAR};
use crate::error::{CliError, Result};
use crate::session::{claims, write_private, Session};
use crate::{convert, input, names, output};

/// Which password is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// The current one, asked once.
    Current,
    /// A new one, asked twice.
    New,
}

/// A password: the first line of stdin with `--password-stdin`; without it, asked on the
/// terminal with echo off when stdin is one; else a usage error (a password is never taken
/// from the command line).
fn password_input(flag: bool, asked: Asked) -> Result<String> {
    let what = match asked {
        Asked::Current => "the password",
        Asked::New => "the new password",
    };
    if flag {
        return input::stdin_lines(1, what)?
            .into_iter()
            .next()
            .ok_or_else(|| CliError::Input(format!("expected {what} on stdin")));
    }
    if !input::stdin_is_terminal() {
        return Err(CliError::Usage(format!(
            "pass {what} on stdin with --password-stdin, or run from a terminal to be asked \
             for it (it is never taken from the command line)"
        )));
    }
    match asked {
        Asked::Current => input::hidden("Password: "),
        Asked::New => input::new_password(),
    }
}

/// Where the token of an invite or reset email is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TokenSource {
    /// `--token`: on the command line, seen by every local user.
    Flag(String),
    /// `--token-file PATH`.
    File(PathBuf),
    /// `STEWARD_LINK_TOKEN`.
    Env(String),
    /// Asked on the terminal, with echo off.
    Prompt,
    /// The first line of stdin; the new password is the second (`--password-stdin`).
    Stdin,
}

/// Picks the token's source: `--token`, `--token-file`, a non-empty `STEWARD_LINK_TOKEN`
/// (`env`), else the terminal when stdin is one, else stdin's first line with
/// `--password-stdin`; anything else is a usage error, before anything is read.
fn token_source(
    link: &LinkToken,
    env: Option<String>,
    stdin_is_terminal: bool,
) -> Result<TokenSource> {
    if let Some(token) = &link.token {
        return Ok(TokenSource::Flag(token.clone()));
    }
    if let Some(path) = &link.token_file {
        return Ok(TokenSource::File(path.clone()));
    }
    if let Some(token) = env.filter(|t| !t.trim().is_empty()) {
        return Ok(TokenSource::Env(token));
    }
    if stdin_is_terminal {
        return Ok(TokenSource::Prompt);
    }
    if link.password_stdin {
        return Ok(TokenSource::Stdin);
    }
    Err(CliError::Usage(format!(
        "give the token from the email: run from a terminal to paste it when asked, or use \
         --token-file PATH or {LINK_TOKEN_VAR}; with --password-stdin, stdin may hold the \
         token, then the new password, one per line"
    )))
}

/// The token in `text`: the `token=` value of a pasted link, else the text without its
/// surrounding whitespace; `None` when that leaves nothing.
fn link_token(text: &str) -> Option<String> {
    let text = text.trim();
    let token = match text.find("token=") {
        Some(at) => text
            .get(at + "token=".len()..)
            .unwrap_or_default()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect(),
        None => text.to_string(),
    };
    (!token.is_empty()).then_some(token)
}

/// The token of an invite or reset email and the new password (see [`LinkToken`]). The token
/// is never echoed: not when asked for, not in errors.
fn token_and_password(link: &LinkToken) -> Result<(String, String)> {
    let env = std::env::var(LINK_TOKEN_VAR).ok();
    let source = token_source(link, env, input::stdin_is_terminal())?;
    let (text, password) = match source {
        TokenSource::Flag(token) => {
            if input::stderr_is_terminal() {
                output::note(&format!(
                    "warning: --token is visible to other users of this machine and kept in \
                     shell history; leave it out to paste the token when asked (or use \
                     --token-file or {LINK_TOKEN_VAR})"
                ));
            }
            (token, password_input(link.password_stdin, Asked::New)?)
        }
        TokenSource::File(path) => {
            let text = std::fs::read_to_string(&path).map_err(|source| CliError::Io {
                context: "cannot read the token file",
                path: path.clone(),
                source,
            })?;
            let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
            (first.to_string(), password_input(link.password_stdin, Asked::New)?)
        }
        TokenSource::Env(token) => (token, password_input(link.password_stdin, Asked::New)?),
        TokenSource::Prompt => {
            let token = input::hidden("Paste the token from the email: ")?;
            (token, password_input(link.password_stdin, Asked::New)?)
        }
        TokenSource::Stdin => {
            let mut lines = input::stdin_lines(2, "the token, then the new password")?.into_iter();
            (lines.next().unwrap_or_default(), lines.next().unwrap_or_default())
        }
    };
    let token = link_token(&text)
        .ok_or_else(|| CliError::Input("no token given: it is in the email".into()))?;
    Ok((token, password))
}

/// `steward accept-invite`.
pub async fn accept_invite(ctx: &mut Context, args: AcceptInvite) -> Result<u8> {
    let (token, password) = token_and_password(&args.link)?;
    let request = AcceptInviteRequest { token, password };
    let answer = ctx.anonymous().await?.auth().accept_invite(request).await?.into_inner();
    match ctx.format {
        Format::Json => output::json_doc(&json!({"administrator": answer.administrator}))?,
        Format::Text => {
            output::line(&format!("invite accepted for {}", answer.administrator))?;
            output::note(&format!("sign in with: {} login --email EMAIL", ctx.steward()));
        }
    }
    Ok(0)
}

fn scope_name(scope: i32) -> String {
    TokenScope::try_from(scope).map(|s| s.as_str_name().to_string()).unwrap_or_default()
}

/// `steward login`.
pub async fn login(ctx: &mut Context, args: Login) -> Result<u8> {
    if ctx.uses_api_key() {
        return Err(api_key_is_set("sign in"));
    }
    let password = password_input(args.password_stdin, Asked::Current)?;
    let client = ctx.anonymous().await?;
    let request = SignInRequest {
        email: args.email.clone(),
        password,
        organization: args.organization.as_deref().map(names::organization).unwrap_or_default(),
    };
    let answer = client.auth().sign_in(request).await?.into_inner();
    let tokens: TokenSet = match answer.result {
        Some(sign_in_response::Result::Tokens(tokens)) => tokens,
        Some(sign_in_response::Result::MfaChallenge(challenge)) => {
            let code = match (args.totp, args.recovery_code) {
                (Some(code), _) => verify_mfa_request::Code::TotpCode(code),
                (None, Some(code)) => verify_mfa_request::Code::RecoveryCode(code),
                (None, None) => return Err(CliError::Input(
                    "this account uses MFA: sign in again with --totp CODE or --recovery-code CODE"
                        .into(),
                )),
            };
            let request = VerifyMfaRequest { challenge: challenge.challenge, code: Some(code) };
            client
                .auth()
                .verify_mfa(request)
                .await?
                .into_inner()
                .tokens
                .ok_or(CliError::Protocol("VerifyMfa without tokens"))?
        }
        None => return Err(CliError::Protocol("SignIn without a result")),
    };
    let claims = claims(&tokens.access_token)?;
    let scope = scope_name(tokens.scope);
    let expires = convert::time(tokens.access_token_expire_time.as_ref());
    ctx.set_session(Session {
        server: ctx.server.clone(),
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        organization: claims.org.clone(),
        administrator: claims.sub.clone(),
        email: args.email,
        scope: scope.clone(),
    })?;
    ctx.remember_server()?;
    let enrolment_only = tokens.scope == TokenScope::MfaEnrollment as i32;
    match ctx.format {
        Format::Json => output::json_doc(&json!({"administrator": claims.sub,
            "organization": claims.org, "scope": scope, "access_token_expire_time": expires}))?,
        Format::Text => {
            output::line(&format!("signed in as {} ({})", claims.sub, claims.org))?;
            if enrolment_only {
                output::note(
                    "MFA is required for this account: run `steward mfa enroll`, then \
                     `steward mfa confirm --code CODE`, then sign in again",
                );
            }
        }
    }
    Ok(0)
}

/// `steward logout`: revokes the session on the server, then forgets it locally (also when
/// the server could not be told).
pub async fn logout(ctx: &mut Context) -> Result<u8> {
    if ctx.uses_api_key() {
        output::note(&format!(
            "{API_KEY_VAR} is set: there is no session to sign out of (to revoke the key: \
             steward service-accounts keys delete KEY)"
        ));
        return Ok(0);
    }
    if ctx.session().is_err() {
        output::note("not signed in");
        return Ok(0);
    }
    let revoked = ctx.call(|s| async move { s.auth().sign_out(SignOutRequest {}).await }).await;
    ctx.clear_session()?;
    if let Err(err) = &revoked {
        output::note(&format!("warning: the server did not confirm the sign-out: {err}"));
    }
    if ctx.format == Format::Json {
        output::json_doc(&json!({"signed_out": revoked.is_ok()}))?;
    } else {
        output::line("signed out")?;
    }
    Ok(0)
}

/// `steward whoami`. A service account (`STEWARD_API_KEY`) has no profile: it is shown as the
/// key's exchange named it, `{"service_account": ..., "organization": ...}`.
pub async fn whoami(ctx: &mut Context) -> Result<u8> {
    if ctx.uses_api_key() {
        let session = ctx.session()?;
        let value = json!({"service_account": session.administrator,
            "organization": session.organization});
        output::object(ctx.format, &value)?;
        return Ok(0);
    }
    let answer =
        ctx.call(|s| async move { s.admin().get_profile(GetProfileRequest {}).await }).await?;
    let profile = answer.profile.ok_or(CliError::Protocol("GetProfile without a profile"))?;
    output::object(ctx.format, &convert::profile(&profile))?;
    Ok(0)
}

/// `steward profile`: changes the caller's own settings, then shows the profile.
pub async fn profile(ctx: &mut Context, args: Profile) -> Result<u8> {
    let Some(whats_new) = args.whats_new else {
        return Err(CliError::Usage("nothing to change: pass --whats-new true|false".into()));
    };
    let request = UpdateProfileRequest {
        whats_new,
        update_mask: Some(prost_types::FieldMask { paths: vec!["whats_new".into()] }),
    };
    let answer = ctx
        .call(move |s| {
            let request = request.clone();
            async move { s.admin().update_profile(request).await }
        })
        .await?;
    let profile = answer.profile.ok_or(CliError::Protocol("UpdateProfile without a profile"))?;
    output::object(ctx.format, &convert::profile(&profile))?;
    Ok(0)
}

/// `steward password ...`.
pub async fn password(ctx: &mut Context, cmd: PasswordCommand) -> Result<u8> {
    match cmd {
        PasswordCommand::Change { stdin } => {
            let (current_password, new_password) = if stdin {
                let mut lines =
                    input::stdin_lines(2, "the current and the new password")?.into_iter();
                (lines.next().unwrap_or_default(), lines.next().unwrap_or_default())
            } else if input::stdin_is_terminal() {
                (input::hidden("Current password: ")?, input::new_password()?)
            } else {
                return Err(CliError::Usage(
                    "pass the current and the new password on stdin (one per line) with \
                     --stdin, or run from a terminal to be asked for them"
                        .into(),
                ));
            };
            let request = ChangePasswordRequest { current_password, new_password };
            ctx.call(move |s| {
                let request = request.clone();
                async move { s.auth().change_password(request).await }
            })
            .await?;
            output::line("password changed; your other sessions were signed out")?;
        }
        PasswordCommand::RequestReset { email, organization } => {
            let request = RequestPasswordResetRequest {
                email,
                organization: organization.as_deref().map(names::organization).unwrap_or_default(),
            };
            ctx.anonymous().await?.auth().request_password_reset(request).await?;
            output::line("if the account exists, a password-reset email is on its way")?;
        }
        PasswordCommand::Reset(link) => {
            let (token, new_password) = token_and_password(&link)?;
            let request = ResetPasswordRequest { token, new_password };
            ctx.anonymous().await?.auth().reset_password(request).await?;
            output::line("password reset; sign in with the new password")?;
        }
    }
    Ok(0)
}

/// `steward mfa ...`.
pub async fn mfa(ctx: &mut Context, cmd: MfaCommand) -> Result<u8> {
    match cmd {
        MfaCommand::Enroll { qr } => {
            let answer = ctx
                .call(|s| async move {
                    s.auth().begin_mfa_enrollment(BeginMfaEnrollmentRequest {}).await
                })
                .await?;
            if let Some(path) = &qr {
                write_private(path, &answer.qr_code_png)?;
            }
            let mut value = json!({"secret": answer.secret, "otpauth_uri": answer.otpauth_uri,
                "expire_time": convert::time(answer.expire_time.as_ref())});
            if let (Some(path), Some(map)) = (&qr, value.as_object_mut()) {
                map.insert("qr_code_file".into(), json!(path.display().to_string()));
            }
            output::object(ctx.format, &value)?;
            if ctx.format == Format::Text {
                output::note(
                    "add it to your authenticator app, then: steward mfa confirm --code CODE",
                );
            }
        }
        MfaCommand::Confirm { code } => {
            let request = ConfirmMfaEnrollmentRequest { totp_code: code };
            let answer = ctx
                .call(move |s| {
                    let request = request.clone();
                    async move { s.auth().confirm_mfa_enrollment(request).await }
                })
                .await?;
            match ctx.format {
                Format::Json => {
                    output::json_doc(&json!({"recovery_codes": answer.recovery_codes}))?
                }
                Format::Text => {
                    output::note("recovery codes (shown once; each replaces a code one time):");
                    for code in &answer.recovery_codes {
                        output::line(code)?;
                    }
                }
            }
            let enrolment_only = ctx.session()?.scope == TokenScope::MfaEnrollment.as_str_name();
            if enrolment_only {
                output::note("MFA enrolled: sign in again with --totp CODE for a full session");
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(token: Option<&str>, file: Option<&str>, password_stdin: bool) -> LinkToken {
        LinkToken {
            token: token.map(str::to_string),
            token_file: file.map(PathBuf::from),
            password_stdin,
        }
    }

    #[test]
    fn the_token_comes_from_the_flag_the_file_the_variable_the_terminal_or_stdin() {
        let env = || Some("from-env".to_string());
        let source = |l: &LinkToken, env: Option<String>, tty| token_source(l, env, tty).unwrap();
        assert_eq!(
            source(&link(Some("t"), None, true), env(), true),
            TokenSource::Flag("t".into())
        );
        assert_eq!(
            source(&link(None, Some("f"), false), env(), false),
            TokenSource::File("f".into())
        );
        assert_eq!(
            source(&link(None, None, true), env(), false),
            TokenSource::Env("from-env".into())
        );
        // An empty variable is no token.
        assert_eq!(source(&link(None, None, false), Some(" ".into()), true), TokenSource::Prompt);
        assert_eq!(source(&link(None, None, true), None, true), TokenSource::Prompt);
        assert_eq!(source(&link(None, None, true), None, false), TokenSource::Stdin);
        // Nowhere to read it from: a usage error, before anything is read.
        let refused = token_source(&link(None, None, false), None, false);
        assert!(matches!(refused, Err(CliError::Usage(_))), "{refused:?}");
    }

    #[test]
    fn a_pasted_link_or_padded_token_gives_the_token() {
        assert_eq!(link_token("  -Ab_9z \n").as_deref(), Some("-Ab_9z"));
        let pasted = "https://console.invalid/set-password?token=Ab-_9z";
        assert_eq!(link_token(pasted).as_deref(), Some("Ab-_9z"));
        assert_eq!(link_token(" \r\n"), None);
        assert_eq!(link_token("x?token="), None);
    }
}
