//! The service's tables as sea-orm entities. Every row carries the full resource name as its key
//! (globally unique, so organizations sharing one PostgreSQL database never collide) and, where
//! it is a top-level resource, its `organization` for scoping.

/// `commands_commands`: the commands.
pub mod command {
    use sea_orm::entity::prelude::*;

    /// A command.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "commands_commands")]
    pub struct Model {
        /// `organizations/{o}/commands/{c}`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// `organizations/{o}`.
        pub organization: String,
        /// Human-readable name.
        pub display_name: String,
        /// What it does.
        #[sea_orm(column_type = "Text")]
        pub description: String,
        /// Script text.
        #[sea_orm(column_type = "Text")]
        pub script: String,
        /// `Interpreter` enum value.
        pub interpreter: i32,
        /// Account to run as; empty for the agent's own.
        pub run_as_user: String,
        /// Timeout, whole seconds.
        pub timeout_secs: i64,
        /// Timeout, extra nanoseconds.
        pub timeout_nanos: i32,
        /// Incremented on every change.
        pub revision: i64,
        /// Opaque checksum of the current revision.
        pub etag: String,
        /// Creation time.
        pub create_time: DateTimeUtc,
        /// Last change.
        pub update_time: DateTimeUtc,
    }

    /// No relations are declared; joins are written explicitly.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `commands_command_targets`: the target systems of each command, in order.
pub mod target {
    use sea_orm::entity::prelude::*;

    /// One target system of one command.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "commands_command_targets")]
    pub struct Model {
        /// The command's name.
        #[sea_orm(primary_key, auto_increment = false)]
        pub command: String,
        /// The system's name.
        #[sea_orm(primary_key, auto_increment = false)]
        pub system: String,
        /// Position in `target_systems`.
        pub position: i32,
    }

    /// No relations are declared.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `commands_grants`: which Command Runner may see and run which command.
pub mod grant {
    use sea_orm::entity::prelude::*;

    /// A grant.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "commands_grants")]
    pub struct Model {
        /// `organizations/{o}/commands/{c}/grants/{g}`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// `organizations/{o}`.
        pub organization: String,
        /// The command's name.
        pub command: String,
        /// The Command Runner's name.
        pub grantee: String,
        /// The Administrator who granted.
        pub grantor: String,
        /// Creation time.
        pub create_time: DateTimeUtc,
    }

    /// No relations are declared.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `commands_runs`: runs, with a snapshot of the command as it was run.
pub mod run {
    use sea_orm::entity::prelude::*;

    /// A run.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "commands_runs")]
    pub struct Model {
        /// `organizations/{o}/runs/{r}`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// `organizations/{o}`.
        pub organization: String,
        /// The command run.
        pub command: String,
        /// The command's etag at the time of the run.
        pub command_revision: String,
        /// Snapshot: script.
        #[sea_orm(column_type = "Text")]
        pub script: String,
        /// Snapshot: interpreter.
        pub interpreter: i32,
        /// Snapshot: run-as user.
        pub run_as_user: String,
        /// Snapshot: timeout seconds.
        pub timeout_secs: i64,
        /// Snapshot: timeout nanoseconds.
        pub timeout_nanos: i32,
        /// Who started it.
        pub runner: String,
        /// Aggregate `RunState`.
        pub state: i32,
        /// Whether CancelRun was called.
        pub cancelled: bool,
        /// Creation time.
        pub create_time: DateTimeUtc,
        /// First start on any system.
        pub start_time: Option<DateTimeUtc>,
        /// When the run became terminal.
        pub end_time: Option<DateTimeUtc>,
    }

    /// No relations are declared.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `commands_run_results`: one system's part of a run, and the dispatch bookkeeping.
pub mod result {
    use sea_orm::entity::prelude::*;

    /// A per-system result.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "commands_run_results")]
    pub struct Model {
        /// The run's name.
        #[sea_orm(primary_key, auto_increment = false)]
        pub run: String,
        /// The system's name.
        #[sea_orm(primary_key, auto_increment = false)]
        pub system: String,
        /// Position in the run's `systems`.
        pub position: i32,
        /// `RunState`.
        pub state: i32,
        /// Exit code once finished.
        pub exit_code: i32,
        /// Standard output captured by versions that stored it here (empty since output is
        /// stored append-only in `commands_run_output`; read as the prefix of that output).
        #[sea_orm(column_type = "VarBinary(StringLen::None)")]
        pub stdout: Vec<u8>,
        /// Standard error captured by earlier versions, like `stdout`.
        #[sea_orm(column_type = "VarBinary(StringLen::None)")]
        pub stderr: Vec<u8>,
        /// Whether stdout was cut.
        pub stdout_truncated: bool,
        /// Whether stderr was cut.
        pub stderr_truncated: bool,
        /// Start of execution.
        pub start_time: Option<DateTimeUtc>,
        /// End of execution.
        pub end_time: Option<DateTimeUtc>,
        /// Why execution failed, if it did.
        #[sea_orm(column_type = "Text")]
        pub error_message: String,
        /// The agent stream the assignment was sent on, once dispatched.
        pub claimed_by: Option<String>,
        /// When CancelRun asked this system to stop.
        pub cancel_time: Option<DateTimeUtc>,
        /// Whether the agent has been told to stop.
        pub cancel_sent: bool,
    }

    /// No relations are declared.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `commands_run_output`: run output, append-only, one row per reported chunk.
pub mod output {
    use sea_orm::entity::prelude::*;

    /// A chunk of one stream of one system's output.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "commands_run_output")]
    pub struct Model {
        /// The run's name.
        #[sea_orm(primary_key, auto_increment = false)]
        pub run: String,
        /// The system's name.
        #[sea_orm(primary_key, auto_increment = false)]
        pub system: String,
        /// `OutputStream` (stdout or stderr).
        #[sea_orm(primary_key, auto_increment = false)]
        pub stream: i32,
        /// Byte offset of `data` in the stream.
        #[sea_orm(primary_key, auto_increment = false)]
        pub offset: i64,
        /// `offset` plus the length of `data`: the stream's captured length after this chunk.
        pub end_offset: i64,
        /// The bytes.
        #[sea_orm(column_type = "VarBinary(StringLen::None)")]
        pub data: Vec<u8>,
    }

    /// No relations are declared.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `commands_systems`: registered machines and their agents' credentials.
pub mod system {
    use sea_orm::entity::prelude::*;

    /// A system.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "commands_systems")]
    pub struct Model {
        /// `organizations/{o}/systems/{s}`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// `organizations/{o}`.
        pub organization: String,
        /// Human-readable name.
        pub display_name: String,
        /// Reported hostname.
        pub hostname: String,
        /// Reported operating system.
        pub os: String,
        /// Reported agent version.
        pub agent_version: String,
        /// SHA-256 (hex) of the agent's credential.
        pub credential_hash: String,
        /// The connect key that registered it.
        pub connect_key: String,
        /// The agent stream currently owning the system, if any.
        pub stream_id: Option<String>,
        /// When the agent was last heard from.
        pub last_seen_time: Option<DateTimeUtc>,
        /// Registration time.
        pub create_time: DateTimeUtc,
        /// Opaque checksum of the current state.
        pub etag: String,
    }

    /// No relations are declared.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `commands_connect_keys`: keys that register agents, stored hashed.
pub mod connect_key {
    use sea_orm::entity::prelude::*;

    /// A connect key.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "commands_connect_keys")]
    pub struct Model {
        /// `organizations/{o}/connectKeys/{k}`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// `organizations/{o}`.
        pub organization: String,
        /// Label.
        pub display_name: String,
        /// SHA-256 (hex) of the secret key.
        pub key_hash: String,
        /// Unused since keys are random (kept for rows written by earlier versions, whose
        /// replays no longer return the key).
        pub key_salt: Option<String>,
        /// The key sealed (XChaCha20-Poly1305) under a key derived from the creating request's
        /// `request_id`, which is stored nowhere, so a replay of that request within the replay
        /// window can show the key again and nothing else can. Cleared when the window ends.
        pub replay_key: Option<String>,
        /// When the key stops working.
        pub expire_time: Option<DateTimeUtc>,
        /// Whether DeleteConnectKey revoked it.
        pub revoked: bool,
        /// Creation time.
        pub create_time: DateTimeUtc,
        /// The Administrator who created it.
        pub creator: String,
    }

    /// No relations are declared.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
