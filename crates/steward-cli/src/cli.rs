//! The command-line grammar.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

/// The default server when neither `--server`, `STEWARD_SERVER` nor a session names one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// Administer a Steward organization: sign in, manage administrators, service accounts,
/// commands, runs, systems, billing and the audit log.
#[derive(Debug, Parser)]
#[command(
    name = "steward",
    version,
    after_help = "With STEWARD_API_KEY set (a service account's API key, from `steward \
                  service-accounts keys create`), commands act as that service account: the \
                  session file is neither read nor written."
)]
pub struct Cli {
    /// Server URL [default: the signed-in session's server, else http://127.0.0.1:50051].
    #[arg(long, global = true, env = "STEWARD_SERVER")]
    pub server: Option<String>,

    /// CA certificate (PEM) trusted for `https://` servers in addition to the system's roots.
    #[arg(long, global = true, env = "STEWARD_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Allow plaintext `http://` to a server that is not on this machine: passwords, tokens and
    /// card numbers then cross the network in clear.
    #[arg(long, global = true)]
    pub insecure_plaintext: bool,

    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub output: Format,

    /// The named profile to use: its own session, server and CA file, kept in the
    /// configuration directory (`steward profiles list` shows them).
    #[arg(long, global = true, env = "STEWARD_PROFILE", default_value = crate::profile::DEFAULT)]
    pub profile: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable lines and tables.
    Text,
    /// JSON (one document; `--wait` and `runs watch` print one event per line).
    Json,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set your first password with the token from an invite email (pasted when asked).
    #[command(after_help = LINK_TOKEN_HELP)]
    AcceptInvite(AcceptInvite),
    /// Sign in and store the session.
    Login(Login),
    /// Sign out: revoke the session and forget it.
    Logout,
    /// Show who you are signed in as.
    Whoami,
    /// Change your own settings (either role may): `--whats-new true|false`.
    Profile(Profile),
    /// Change or reset a password.
    #[command(subcommand)]
    Password(PasswordCommand),
    /// Enrol an authenticator app (TOTP).
    #[command(subcommand)]
    Mfa(MfaCommand),
    /// Manage the organization's administrators.
    #[command(subcommand)]
    Admins(AdminsCommand),
    /// Manage service accounts (identities for CI jobs and integrations) and their API keys.
    #[command(subcommand)]
    ServiceAccounts(ServiceAccountsCommand),
    /// Manage commands and their grants, and run them.
    #[command(subcommand)]
    Commands(CommandsCommand),
    /// Follow, inspect and cancel runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Systems registered by agents.
    #[command(subcommand)]
    Systems(SystemsCommand),
    /// Connect keys with which agents register systems.
    #[command(subcommand)]
    ConnectKeys(ConnectKeysCommand),
    /// The organization's payment card.
    #[command(subcommand)]
    Billing(BillingCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The permissions RPCs need.
    #[command(subcommand)]
    Permissions(PermissionsCommand),
    /// The roles and the permissions they hold.
    #[command(subcommand)]
    Roles(RolesCommand),
    /// The named profiles of this configuration directory (select one with `--profile`).
    #[command(subcommand)]
    Profiles(ProfilesCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write one per command and subcommand to a directory.
    Man {
        /// Write `steward.1`, `steward-admins.1`, `steward-admins-list.1`, ... to this
        /// directory (created if missing) instead of printing `steward.1`.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `steward profiles ...`.
#[derive(Debug, Subcommand)]
pub enum ProfilesCommand {
    /// List the profiles: name, server, who is signed in, and which one is in use.
    List,
}

/// `steward accept-invite`.
#[derive(Debug, Args)]
pub struct AcceptInvite {
    /// Where the token and the new password come from.
    #[command(flatten)]
    pub link: LinkToken,
}

/// The variable that may hold the token of an invite or reset email.
pub const LINK_TOKEN_VAR: &str = "STEWARD_LINK_TOKEN";

/// Where `accept-invite` and `password reset` read the token from, for their help.
const LINK_TOKEN_HELP: &str = "The token comes from --token, --token-file or STEWARD_LINK_TOKEN; \
     without them a terminal is asked for it (echo off), else with --password-stdin it is the \
     first line of stdin and the new password the second.";

/// The single-use token of an invite or password-reset email, and the new password. The token
/// comes from `--token`, `--token-file` or `STEWARD_LINK_TOKEN`; without them, a terminal is
/// asked for it with echo off, and with `--password-stdin` (stdin not a terminal) it is the
/// first line of stdin and the password the second.
#[derive(Debug, Args)]
pub struct LinkToken {
    /// The token from the email (the link's `token=` value). Visible to every user of this
    /// machine in the process list and kept in shell history: prefer pasting it when asked,
    /// `--token-file` or `STEWARD_LINK_TOKEN`. Tokens may start with `-`.
    #[arg(long, allow_hyphen_values = true, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// Read the token from this file (its first line; the whole link is accepted too).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Read the new password from stdin (without it, a terminal is asked, with echo off): its
    /// first line, or its second when the token is the first.
    #[arg(long)]
    pub password_stdin: bool,
}

/// `steward profile`.
#[derive(Debug, Args)]
pub struct Profile {
    /// Receive the "What's New" messages about console updates.
    #[arg(long)]
    pub whats_new: Option<bool>,
}

/// `steward login`.
#[derive(Debug, Args)]
pub struct Login {
    /// Your email.
    #[arg(long)]
    pub email: String,
    /// The organization (ID or `organizations/ID`), when your email belongs to several.
    #[arg(long)]
    pub organization: Option<String>,
    /// Read the password from the first line of stdin (without it, a terminal is asked, with
    /// echo off).
    #[arg(long)]
    pub password_stdin: bool,
    /// A code from your authenticator app, when MFA is enrolled.
    #[arg(long, conflicts_with = "recovery_code")]
    pub totp: Option<String>,
    /// One of your recovery codes instead of a TOTP code (used up).
    #[arg(long, allow_hyphen_values = true)]
    pub recovery_code: Option<String>,
}

/// `steward password ...`.
#[derive(Debug, Subcommand)]
pub enum PasswordCommand {
    /// Change your password: stdin holds the current password, then the new one, one per line
    /// (without --stdin, a terminal is asked for them, with echo off).
    Change {
        /// Read both passwords from stdin.
        #[arg(long = "stdin", alias = "current-stdin")]
        stdin: bool,
    },
    /// Ask for a password-reset email.
    RequestReset {
        /// The account's email.
        #[arg(long)]
        email: String,
        /// The organization (ID or name), if the email belongs to several.
        #[arg(long)]
        organization: Option<String>,
    },
    /// Set a new password with the token from a reset email (pasted when asked).
    #[command(after_help = LINK_TOKEN_HELP)]
    Reset(LinkToken),
}

/// `steward mfa ...`.
#[derive(Debug, Subcommand)]
pub enum MfaCommand {
    /// Start enrolment: prints the secret and the otpauth URI.
    Enroll {
        /// Also write the QR code (PNG) to this file.
        #[arg(long)]
        qr: Option<PathBuf>,
    },
    /// Confirm enrolment with a first code; prints the recovery codes (shown once).
    Confirm {
        /// A current 6-digit code from the authenticator app.
        #[arg(long)]
        code: String,
    },
}

/// `steward admins ...`.
#[derive(Debug, Subcommand)]
pub enum AdminsCommand {
    /// List administrators.
    List {
        /// E.g. `role = ROLE_COMMAND_RUNNER AND state = STATE_ACTIVE`.
        #[arg(long)]
        filter: Option<String>,
        /// `email` or `create_time`, optionally followed by ` desc`.
        #[arg(long)]
        order_by: Option<String>,
    },
    /// Show one administrator (ID, resource name or email).
    Get {
        /// ID, `organizations/O/administrators/ID` or email.
        admin: String,
    },
    /// Create an administrator and send it an invite email.
    Create {
        /// Its email.
        #[arg(long)]
        email: String,
        /// Its role: `administrator`, `manager`, `help-desk`, `read-only`, `command-runner`,
        /// or the id (or full name) of one of the organization's own roles.
        #[arg(long)]
        role: String,
        /// Give it billing access.
        #[arg(long)]
        billing: bool,
        /// Require it to use MFA.
        #[arg(long)]
        require_mfa: bool,
        /// Send it the "What's New" messages.
        #[arg(long)]
        whats_new: bool,
    },
    /// Change an administrator; only the fields given change. Refused (ABORTED) if it changed
    /// since it was read.
    #[command(group(ArgGroup::new("changes").required(true).multiple(true)
        .args(["role", "billing", "require_mfa", "whats_new"])))]
    Update {
        /// ID, resource name or email.
        admin: String,
        /// New role, as for `create`.
        #[arg(long)]
        role: Option<String>,
        /// Billing access.
        #[arg(long)]
        billing: Option<bool>,
        /// MFA requirement.
        #[arg(long)]
        require_mfa: Option<bool>,
        /// "What's New" messages.
        #[arg(long)]
        whats_new: Option<bool>,
        /// The etag read earlier (`admins get`); by default the current one is read first.
        #[arg(long)]
        etag: Option<String>,
    },
    /// Delete administrators, all or none. With --dry-run, show who would be deleted.
    Delete {
        /// IDs, resource names or emails.
        #[arg(required = true)]
        admins: Vec<String>,
        /// Only check, and show who would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Send a new invite email to an administrator that has not accepted yet.
    ResendInvite {
        /// ID, resource name or email.
        admin: String,
    },
    /// Remove an administrator's MFA enrolment (e.g. after a lost phone).
    ResetMfa {
        /// ID, resource name or email.
        admin: String,
    },
}

/// `steward service-accounts ...`.
#[derive(Debug, Subcommand)]
pub enum ServiceAccountsCommand {
    /// List the organization's service accounts, oldest first.
    List,
    /// Show one service account.
    Get {
        /// ID or resource name (`organizations/O/serviceAccounts/ID`).
        account: String,
    },
    /// Create a service account (then give it an API key with `keys create`).
    Create {
        /// Its display name.
        #[arg(long)]
        name: String,
        /// Its role, as for `admins create`: `administrator`, `manager`, `help-desk`,
        /// `read-only`, `command-runner`, or the id (or full name) of one of the organization's
        /// own roles.
        #[arg(long)]
        role: String,
        /// Give it billing access.
        #[arg(long)]
        billing: bool,
    },
    /// Delete a service account and its keys; its access tokens stop working at once.
    Delete {
        /// ID or resource name.
        account: String,
    },
    /// A service account's API keys.
    #[command(subcommand)]
    Keys(ServiceAccountKeysCommand),
}

/// `steward service-accounts keys ...`.
#[derive(Debug, Subcommand)]
pub enum ServiceAccountKeysCommand {
    /// Create an API key; it is shown only this once. An account has at most two unexpired
    /// keys, so a key can be rotated: create the new one, deploy it, delete the old one.
    Create {
        /// The service account: ID or resource name.
        account: String,
        /// Days until the key stops working (1 to 365).
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u16).range(1..=365))]
        expires_in: u16,
    },
    /// List a service account's keys (never their secrets), newest first.
    List {
        /// The service account: ID or resource name.
        account: String,
    },
    /// Delete (revoke) an API key; tokens it was exchanged for stop working at once.
    Delete {
        /// The key's name, `organizations/O/serviceAccounts/S/keys/K` (or `S/keys/K`), as
        /// `keys list` shows it.
        key: String,
    },
}

/// A command's interpreter on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InterpreterArg {
    /// POSIX sh.
    Sh,
    /// Bash.
    Bash,
    /// PowerShell.
    Powershell,
    /// Python 3.
    Python3,
}

/// `steward commands ...`.
#[derive(Debug, Subcommand)]
pub enum CommandsCommand {
    /// List commands (a Command Runner sees only its granted ones).
    List {
        /// E.g. `display_name = "disk usage report"`.
        #[arg(long)]
        filter: Option<String>,
        /// E.g. `create_time desc`.
        #[arg(long)]
        order_by: Option<String>,
    },
    /// Show one command.
    Get {
        /// ID or resource name.
        command: String,
    },
    /// Create a command.
    Create {
        /// Its display name.
        #[arg(long)]
        name: String,
        /// The script: a file, or `-` for stdin.
        #[arg(long)]
        script: String,
        /// The interpreter.
        #[arg(long, value_enum)]
        interpreter: InterpreterArg,
        /// What it does.
        #[arg(long)]
        description: Option<String>,
        /// The account to run as (default: the agent's).
        #[arg(long)]
        run_as: Option<String>,
        /// Time limit, e.g. `60s`, `5m`, `1h`.
        #[arg(long, default_value = "60s")]
        timeout: String,
        /// A target system (ID or resource name); repeat for several.
        #[arg(long = "system")]
        systems: Vec<String>,
    },
    /// Change a command; only the fields given change. Refused (ABORTED) if it changed since
    /// it was read.
    #[command(group(ArgGroup::new("changes").required(true).multiple(true)
        .args(["name", "script", "interpreter", "description", "run_as", "timeout", "systems",
               "no_systems"])))]
    Update {
        /// ID or resource name.
        command: String,
        /// New display name.
        #[arg(long)]
        name: Option<String>,
        /// New script: a file, or `-` for stdin.
        #[arg(long)]
        script: Option<String>,
        /// New interpreter.
        #[arg(long, value_enum)]
        interpreter: Option<InterpreterArg>,
        /// New description (empty clears it).
        #[arg(long)]
        description: Option<String>,
        /// New account to run as (empty: the agent's).
        #[arg(long)]
        run_as: Option<String>,
        /// New time limit, e.g. `60s`, `5m`, `1h`.
        #[arg(long)]
        timeout: Option<String>,
        /// Replace the target systems with these (ID or resource name); repeat for several.
        #[arg(long = "system", conflicts_with = "no_systems")]
        systems: Vec<String>,
        /// Remove every target system.
        #[arg(long)]
        no_systems: bool,
        /// The etag read earlier (`commands get`); by default the current one is read first.
        #[arg(long)]
        etag: Option<String>,
    },
    /// Delete a command and its grants.
    Delete {
        /// ID or resource name.
        command: String,
    },
    /// Grant a Command Runner access to a command.
    Grant {
        /// ID or resource name of the command.
        command: String,
        /// The administrator: ID, resource name or email.
        #[arg(long)]
        to: String,
    },
    /// Revoke a grant.
    Revoke {
        /// The grant: `organizations/O/commands/C/grants/G` or `C/grants/G`.
        grant: String,
    },
    /// Show one grant.
    ShowGrant {
        /// The grant: `organizations/O/commands/C/grants/G` or `C/grants/G`.
        grant: String,
    },
    /// List grants of a command, or of all commands.
    Grants {
        /// ID or resource name of the command (default: all).
        command: Option<String>,
    },
    /// Run a command.
    Run {
        /// ID or resource name.
        command: String,
        /// Only on this target system; repeat for several (default: all targets).
        #[arg(long = "system")]
        systems: Vec<String>,
        /// Follow the run: print its name first, then its output; exit 0 if it succeeded and 1
        /// otherwise. Ctrl-C stops following (exit 130), not the run.
        #[arg(long)]
        wait: bool,
        /// With --wait: exit with the script's own exit code when the run did not succeed: the
        /// first non-zero one among the systems, as the agent reported it (128 + the signal for
        /// a script killed on timeout or cancel, e.g. 137); 1 when there is none (e.g. the
        /// system was unreachable).
        #[arg(long, requires = "wait")]
        exit_code: bool,
    },
}

/// `steward runs ...`.
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List runs (a Command Runner sees its own).
    List {
        /// E.g. `state = RUN_STATE_RUNNING`.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Show a run with its output.
    Get {
        /// ID or resource name.
        run: String,
    },
    /// Cancel a run.
    Cancel {
        /// ID or resource name.
        run: String,
    },
    /// Follow a run until it ends; exit 0 if it succeeded and 1 otherwise. Ctrl-C stops
    /// following (exit 130), not the run.
    Watch {
        /// ID or resource name.
        run: String,
        /// Exit with the script's own exit code, as `commands run --wait --exit-code`.
        #[arg(long)]
        exit_code: bool,
    },
}

/// `steward systems ...`.
#[derive(Debug, Subcommand)]
pub enum SystemsCommand {
    /// List systems.
    List,
    /// Show a system.
    Get {
        /// ID or resource name.
        system: String,
    },
    /// Rename a system.
    Update {
        /// ID or resource name.
        system: String,
        /// New display name.
        #[arg(long)]
        name: String,
        /// The etag read earlier (`systems get`); by default the current one is read first.
        #[arg(long)]
        etag: Option<String>,
    },
    /// Delete a system.
    Delete {
        /// ID or resource name.
        system: String,
    },
}

/// `steward connect-keys ...`.
#[derive(Debug, Subcommand)]
pub enum ConnectKeysCommand {
    /// Create a connect key; the key is shown this once.
    Create {
        /// A label.
        #[arg(long)]
        name: Option<String>,
    },
    /// List connect keys (without their secret).
    List,
    /// Delete (revoke) a connect key.
    Delete {
        /// ID or resource name.
        key: String,
    },
}

/// `steward billing ...`.
#[derive(Debug, Subcommand)]
pub enum BillingCommand {
    /// Show the payment card.
    Get,
    /// Set or change the payment card.
    Set {
        /// Read a new card number, then its CVC, from stdin (one per line).
        #[arg(long)]
        number_stdin: bool,
        /// Expiry, `MM/YYYY`.
        #[arg(long)]
        exp: Option<String>,
        /// Cardholder name.
        #[arg(long)]
        name: Option<String>,
    },
}

/// `steward audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit events, newest first.
    List {
        /// E.g. `result = RESULT_DENIED`.
        #[arg(long)]
        filter: Option<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// `steward roles ...`.
#[derive(Debug, Subcommand)]
pub enum RolesCommand {
    /// List the built-in roles, then the organization's own.
    List,
    /// Show one role and its permissions.
    Get {
        /// `administrator`, `manager`, `help-desk`, `read-only`, `command-runner`, or a full
        /// name (`roles/...`, `organizations/O/roles/R`).
        role: String,
    },
    /// Create an organization's own role (only with permissions you hold).
    Create {
        /// The role's id, the last segment of its name (e.g. `auditor`).
        id: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// What the role is for.
        #[arg(long, default_value = "")]
        description: String,
        /// A permission from `steward permissions list`; repeat for more.
        #[arg(long = "permission")]
        permissions: Vec<String>,
    },
    /// Change an organization's own role: only the flags given change.
    Update {
        /// The role's id or full name.
        id: String,
        /// New display name.
        #[arg(long)]
        name: Option<String>,
        /// New description.
        #[arg(long)]
        description: Option<String>,
        /// The complete new set of permissions (repeat the flag); `--no-permissions` empties it.
        #[arg(long = "permission")]
        permissions: Vec<String>,
        /// Remove every permission (what every role holds stays).
        #[arg(long, conflicts_with = "permissions")]
        no_permissions: bool,
    },
    /// Delete an organization's own role that no one holds.
    Delete {
        /// The role's id or full name.
        id: String,
    },
}

/// `steward permissions ...`.
#[derive(Debug, Subcommand)]
pub enum PermissionsCommand {
    /// List every permission, what it allows and the RPCs that need it.
    List,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn tokens_and_codes_starting_with_a_hyphen_parse() {
        let cli = Cli::try_parse_from([
            "steward",
            "accept-invite",
            "--token",
            "-bQx9token",
            "--password-stdin",
        ])
        .unwrap();
        let Command::AcceptInvite(args) = cli.command else { panic!("accept-invite") };
        assert_eq!(args.link.token.as_deref(), Some("-bQx9token"));
        let cli = Cli::try_parse_from([
            "steward",
            "login",
            "--email",
            "a@example.com",
            "--password-stdin",
            "--recovery-code",
            "-abc-def",
        ])
        .unwrap();
        let Command::Login(args) = cli.command else { panic!("login") };
        assert_eq!(args.recovery_code.as_deref(), Some("-abc-def"));
    }

    #[test]
    fn service_account_keys_expire_in_90_days_unless_told() {
        let cli =
            Cli::try_parse_from(["steward", "service-accounts", "keys", "create", "ci"]).unwrap();
        let Command::ServiceAccounts(ServiceAccountsCommand::Keys(
            ServiceAccountKeysCommand::Create { account, expires_in },
        )) = cli.command
        else {
            panic!("service-accounts keys create")
        };
        assert_eq!((account.as_str(), expires_in), ("ci", 90));
        for days in ["0", "366"] {
            let args =
                ["steward", "service-accounts", "keys", "create", "ci", "--expires-in", days];
            assert!(Cli::try_parse_from(args).is_err(), "{days}");
        }
    }
}
