//! The auth service's tables (all prefixed `auth_`), as sea-orm entities. Secrets are never stored
//! in the clear except the TOTP secret, which the service must be able to read back to check
//! codes: passwords are argon2id PHC strings, link tokens, refresh tokens, MFA challenges and
//! recovery codes are SHA-256 digests of high-entropy random strings.

/// One row per administrator that has been invited: its email, password hash and MFA state.
pub mod credential {
    use sea_orm::entity::prelude::*;

    /// `auth_credentials`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "auth_credentials")]
    pub struct Model {
        /// `organizations/{o}/administrators/{a}`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub administrator: String,
        /// `organizations/{o}`.
        pub organization: String,
        /// The organization's display name, a user input for the password strength estimator.
        pub organization_display_name: String,
        /// Lowercased email.
        pub email: String,
        /// argon2id PHC string; `None` until the invite is accepted.
        pub password_hash: Option<String>,
        /// When the invite was accepted.
        pub activated_at: Option<DateTimeUtc>,
        /// Base32 TOTP secret of the confirmed enrolment.
        pub mfa_secret: Option<String>,
        /// Whether MFA is enrolled.
        pub mfa_enrolled: bool,
        /// Base32 secret of an enrolment awaiting confirmation.
        pub mfa_pending_secret: Option<String>,
        /// When the pending enrolment lapses.
        pub mfa_pending_expires_at: Option<DateTimeUtc>,
        /// Last accepted TOTP time step; a code of this step or earlier is a replay.
        pub mfa_last_step: Option<i64>,
        /// Created.
        pub created_at: DateTimeUtc,
        /// Last changed.
        pub updated_at: DateTimeUtc,
    }

    /// No relations are declared; joins are by administrator name.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Single-use invite and password-reset links.
pub mod link_token {
    use sea_orm::entity::prelude::*;

    /// `auth_link_tokens`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "auth_link_tokens")]
    pub struct Model {
        /// Hex SHA-256 of the token in the link.
        #[sea_orm(primary_key, auto_increment = false)]
        pub token_hash: String,
        /// The administrator the link is for.
        pub administrator: String,
        /// Its organization.
        pub organization: String,
        /// `invite` or `reset`.
        pub kind: String,
        /// Expiry.
        pub expires_at: DateTimeUtc,
        /// When it was used.
        pub used_at: Option<DateTimeUtc>,
        /// Issued.
        pub created_at: DateTimeUtc,
    }

    /// None.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Sign-in sessions (refresh-token families).
pub mod session {
    use sea_orm::entity::prelude::*;

    /// `auth_sessions`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "auth_sessions")]
    pub struct Model {
        /// Session id (the `sid` claim).
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// The administrator signed in.
        pub administrator: String,
        /// Its organization.
        pub organization: String,
        /// Authentication methods, space separated (`pwd otp`).
        pub amr: String,
        /// `full` or `mfa_enrollment`.
        pub scope: String,
        /// Signed in.
        pub created_at: DateTimeUtc,
        /// Absolute end of the session: no refresh after this.
        pub expires_at: DateTimeUtc,
        /// When it was revoked (sign-out, reuse, password change, deletion).
        pub revoked_at: Option<DateTimeUtc>,
        /// Hex SHA-256 of the family that names the session's refresh tokens (random, the part
        /// of each token before its `.`; stored only as this digest, so only a holder of one of
        /// its tokens knows it). None for enrolment-only sessions and for sessions whose tokens
        /// are still in `auth_refresh_tokens` (issued before families).
        pub refresh_family: Option<String>,
        /// Hex SHA-256 of the session's current refresh token. Any other token of the family
        /// is one already rotated: presenting it revokes the session.
        pub refresh_hash: Option<String>,
    }

    /// None.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Refresh tokens issued before refresh families (and by the previous release during a
/// rollout to this one); each is used once and replaced by a family token. Dropped two releases
/// on.
pub mod refresh_token {
    use sea_orm::entity::prelude::*;

    /// `auth_refresh_tokens`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "auth_refresh_tokens")]
    pub struct Model {
        /// Hex SHA-256 of the token.
        #[sea_orm(primary_key, auto_increment = false)]
        pub token_hash: String,
        /// Its session.
        pub session_id: String,
        /// When it was exchanged; presenting it again revokes the session.
        pub used_at: Option<DateTimeUtc>,
        /// Issued.
        pub created_at: DateTimeUtc,
    }

    /// None.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Second steps of sign-ins awaiting a TOTP or recovery code.
pub mod mfa_challenge {
    use sea_orm::entity::prelude::*;

    /// `auth_mfa_challenges`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "auth_mfa_challenges")]
    pub struct Model {
        /// Hex SHA-256 of the challenge string.
        #[sea_orm(primary_key, auto_increment = false)]
        pub challenge_hash: String,
        /// The administrator whose password matched.
        pub administrator: String,
        /// Its organization.
        pub organization: String,
        /// Wrong codes presented so far.
        pub attempts: i32,
        /// Expiry.
        pub expires_at: DateTimeUtc,
        /// When it was completed.
        pub used_at: Option<DateTimeUtc>,
    }

    /// None.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Single-use MFA recovery codes.
pub mod recovery_code {
    use sea_orm::entity::prelude::*;

    /// `auth_recovery_codes`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "auth_recovery_codes")]
    pub struct Model {
        /// Hex SHA-256 of the administrator name and the normalized code.
        #[sea_orm(primary_key, auto_increment = false)]
        pub code_hash: String,
        /// Owner.
        pub administrator: String,
        /// When it was used.
        pub used_at: Option<DateTimeUtc>,
        /// Issued.
        pub created_at: DateTimeUtc,
    }

    /// None.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Failure counters for sign-in throttling.
pub mod throttle {
    use sea_orm::entity::prelude::*;

    /// `auth_throttle`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "auth_throttle")]
    pub struct Model {
        /// `account:{email}` or `address:{ip}`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        /// Consecutive failures.
        pub failures: i32,
        /// No attempt is accepted before this.
        pub locked_until: Option<DateTimeUtc>,
        /// Last failure.
        pub updated_at: DateTimeUtc,
    }

    /// None.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
