//! Steward's API: the messages, servers and clients generated from the top-level `proto/`
//! directory, the encoded file descriptor set for server reflection, and [`client::Steward`], a
//! typed client over one channel (the Rust SDK).

#![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]

/// Every Steward `.proto` file, encoded as a `google.protobuf.FileDescriptorSet`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/steward_descriptor.bin"));

/// `steward.admin.v1`: administrators, organizations, and the admin service's internal RPCs.
pub mod admin {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/steward.admin.v1.rs"));
    }
}

/// `steward.auth.v1`: invites, sign-in, MFA, sessions, JWKS.
pub mod auth {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/steward.auth.v1.rs"));
    }
}

/// `steward.billing.v1`: the organization's payment card.
pub mod billing {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/steward.billing.v1.rs"));
    }
}

/// `steward.audit.v1`: the append-only audit log.
pub mod audit {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/steward.audit.v1.rs"));
    }
}

/// `steward.commands.v1`: commands, grants, access checks, runs, systems and agents.
pub mod commands {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/steward.commands.v1.rs"));
    }
}

pub mod client;
