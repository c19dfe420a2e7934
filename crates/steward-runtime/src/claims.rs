//! The access-token claims, shared by the signer (auth service) and every verifier.

use serde::{Deserialize, Serialize};

/// `typ` header of every access token (RFC 9068).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// A built-in role. What each holds is [`crate::roles::built_in`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything in its organization but billing.
    Administrator,
    /// Commands, grants, systems, connect keys, runs and the audit log; not administrators.
    Manager,
    /// Reads administrators, resends invites, resets second factors, reads systems and runs,
    /// runs the commands granted to it.
    HelpDesk,
    /// Reads everything but the payment card; changes nothing, runs nothing.
    ReadOnly,
    /// Runs the commands granted to it, nothing else.
    CommandRunner,
    /// An organization's own role: its name and permissions travel beside it (in tokens,
    /// [`AccessClaims::role_name`] and [`AccessClaims::permissions`]).
    Custom,
}

impl Role {
    /// Every built-in role, most privileged first ([`Role::Custom`] is not one).
    pub const ALL: [Role; 5] =
        [Self::Administrator, Self::Manager, Self::HelpDesk, Self::ReadOnly, Self::CommandRunner];

    /// Stable lowercase name, as stored and as put in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Administrator => "administrator",
            Self::Manager => "manager",
            Self::HelpDesk => "help_desk",
            Self::ReadOnly => "read_only",
            Self::CommandRunner => "command_runner",
            Self::Custom => "custom",
        }
    }

    /// Parses the stored name.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == value)
    }
}

/// What a token may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// Every RPC the role allows.
    Full,
    /// Only MFA enrolment and sign-out: MFA is required but not enrolled yet.
    MfaEnrollment,
}

/// Claims of an access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Administrator resource name, `organizations/{o}/administrators/{a}`.
    pub sub: String,
    /// Organization resource name, `organizations/{o}`.
    pub org: String,
    /// Role at the time of issue.
    pub role: Role,
    /// With [`Role::Custom`]: the role's name, `organizations/{o}/roles/{r}`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role_name: String,
    /// With [`Role::Custom`]: the names of the role's permissions at the time of issue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<String>,
    /// Billing access at the time of issue.
    pub billing: bool,
    /// Authentication methods used (`pwd`, `otp`, `mfa`).
    pub amr: Vec<String>,
    /// Session id; refresh and revocation work per session.
    pub sid: String,
    /// Unique token id.
    pub jti: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Not before (Unix seconds).
    pub nbf: i64,
    /// Expires (Unix seconds).
    pub exp: i64,
    /// Usage restriction.
    pub scope: TokenScope,
    /// A service account's token: the API key it was exchanged for (`sid` too). Empty for
    /// people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    /// When the administrator last proved who they are (password, and second factor if any) in
    /// this session, Unix seconds (OIDC `auth_time`); refreshing keeps it. Zero in tokens from
    /// before this claim existed, which therefore never count as a recent authentication.
    #[serde(default)]
    pub auth_time: i64,
}
