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

/// `steward.authz.v1`: the authorization contract. Every RPC's rule (who may call it, which
/// permission it needs) and the permission catalog, generated at build time from the
/// `steward.authz.v1` options in the protos, so the enforced table cannot drift from them.
pub mod authz {
    /// Version 1: the option types.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/steward.authz.v1.rs"));
    }

    pub use v1::{Access, Permission};

    /// The rule of one RPC.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct MethodRule {
        /// `/package.Service/Method`.
        pub path: &'static str,
        /// Who may call it at all.
        pub access: Access,
        /// The permission it needs (`None` for public, internal and agent RPCs).
        pub permission: Option<Permission>,
    }

    /// A permission of the catalog.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct CatalogEntry {
        /// The permission.
        pub permission: Permission,
        /// Its stable name, `resource.verb`.
        pub name: &'static str,
        /// What it allows, for people.
        pub description: &'static str,
    }

    include!(concat!(env!("OUT_DIR"), "/authz_table.rs"));

    /// The rule of the RPC at `path` (`/package.Service/Method`), if it is one of Steward's.
    pub fn rule(path: &str) -> Option<&'static MethodRule> {
        let found = RULES.binary_search_by(|r| r.path.cmp(path)).ok()?;
        RULES.get(found)
    }

    /// The RPCs that need `permission`.
    pub fn methods(permission: Permission) -> impl Iterator<Item = &'static str> {
        RULES.iter().filter(move |r| r.permission == Some(permission)).map(|r| r.path)
    }
}

pub mod client;
pub mod codec;
