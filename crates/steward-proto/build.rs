//! Compiles every `.proto` under the workspace's top-level `proto/` directory once, for all
//! services, writes one file descriptor set used for server reflection, and turns the
//! `steward.authz.v1` options of that set into the authorization table and the permission
//! catalog (`authz_table.rs`). A method without a rule, or a rule that contradicts itself, fails
//! the build.

use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let root = root.canonicalize()?;
    let mut files = Vec::new();
    collect(&root, &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed={}", root.display());
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    // The vendored protoc keeps the build independent of whatever the machine has installed.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let include = protoc_bin_vendored::include_path()?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("steward_descriptor.bin"))
        .build_client(true)
        .build_server(true)
        // Undecodable messages are INVALID_ARGUMENT, not prost's INTERNAL (src/codec.rs).
        .codec_path("crate::codec::Codec")
        .compile_protos(&files, &[root, include])?;
    let descriptors = std::fs::read(out.join("steward_descriptor.bin"))?;
    match authz::table(&descriptors) {
        Ok(table) => std::fs::write(out.join("authz_table.rs"), table)?,
        Err(problems) => {
            // One line per problem, readable in cargo's output.
            eprintln!("the authorization options of the protos are incomplete:\n{problems}");
            std::process::exit(1);
        }
    }
    Ok(())
}

/// The parts of `google.protobuf.FileDescriptorSet` the authorization table needs, with the
/// `steward.authz.v1` extensions as the fields they are on the wire (prost keeps no unknown
/// fields, so the options are declared here by their numbers).
mod authz {
    use prost::Message;

    #[derive(Clone, PartialEq, Message)]
    struct FileSet {
        #[prost(message, repeated, tag = "1")]
        file: Vec<File>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct File {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(string, tag = "2")]
        package: String,
        #[prost(message, repeated, tag = "5")]
        enum_type: Vec<Enum>,
        #[prost(message, repeated, tag = "6")]
        service: Vec<Service>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Service {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, repeated, tag = "2")]
        method: Vec<Method>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Method {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, optional, tag = "4")]
        options: Option<MethodOptions>,
    }

    /// Tag 51301 is the `steward.authz.v1.rule` extension.
    #[derive(Clone, PartialEq, Message)]
    struct MethodOptions {
        #[prost(message, optional, tag = "51301")]
        rule: Option<Rule>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Rule {
        #[prost(int32, tag = "1")]
        access: i32,
        #[prost(int32, tag = "2")]
        permission: i32,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Enum {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, repeated, tag = "2")]
        value: Vec<EnumValue>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct EnumValue {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(int32, tag = "2")]
        number: i32,
        #[prost(message, optional, tag = "3")]
        options: Option<EnumValueOptions>,
    }

    /// Tag 51300 is the `steward.authz.v1.info` extension.
    #[derive(Clone, PartialEq, Message)]
    struct EnumValueOptions {
        #[prost(message, optional, tag = "51300")]
        info: Option<Info>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Info {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(string, tag = "2")]
        description: String,
    }

    /// `ACCESS_ADMINISTRATOR` → `Administrator` (prost's variant names).
    fn variant(value: &str, prefix: &str) -> String {
        value
            .strip_prefix(prefix)
            .unwrap_or(value)
            .split('_')
            .map(|w| {
                let mut chars = w.chars();
                chars.next().map_or_else(String::new, |c| {
                    c.to_ascii_uppercase().to_string() + &chars.as_str().to_ascii_lowercase()
                })
            })
            .collect()
    }

    /// The Rust source of `RULES` and `PERMISSIONS`.
    pub fn table(descriptors: &[u8]) -> Result<String, Box<dyn std::error::Error>> {
        let set = FileSet::decode(descriptors)?;
        let authz = set
            .file
            .iter()
            .find(|f| f.name == "steward/authz/v1/authz.proto")
            .ok_or("steward/authz/v1/authz.proto is missing")?;
        let enum_values = |name: &str| -> Result<Vec<EnumValue>, String> {
            authz
                .enum_type
                .iter()
                .find(|e| e.name == name)
                .map(|e| e.value.clone())
                .ok_or(format!("steward.authz.v1.{name} is missing"))
        };
        let accesses = enum_values("Access")?;
        let permissions = enum_values("Permission")?;
        // Permission number → (variant, name), in declaration order.
        let mut catalog = Vec::new();
        for value in &permissions {
            if value.number == 0 {
                continue;
            }
            let info = value
                .options
                .as_ref()
                .and_then(|o| o.info.clone())
                .ok_or(format!("{} has no (steward.authz.v1.info)", value.name))?;
            catalog.push((value.number, variant(&value.name, "PERMISSION_"), info));
        }
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package, service.name, method.name);
                    let Some(rule) = method.options.as_ref().and_then(|o| o.rule.clone()) else {
                        errors.push(format!("{path} has no (steward.authz.v1.rule) option"));
                        continue;
                    };
                    let access = accesses.iter().find(|a| a.number == rule.access);
                    let access = match access {
                        Some(a) if a.number != 0 => variant(&a.name, "ACCESS_"),
                        _ => {
                            errors.push(format!("{path}: the rule names no access"));
                            continue;
                        }
                    };
                    let principal = !matches!(access.as_str(), "Public" | "Internal" | "Agent");
                    let permission = catalog.iter().find(|(n, _, _)| *n == rule.permission);
                    let permission = match (principal, permission) {
                        (true, Some((_, variant, _))) => format!("Some(Permission::{variant})"),
                        (false, None) if rule.permission == 0 => "None".to_string(),
                        (true, None) => {
                            errors.push(format!("{path}: {access} calls need a permission"));
                            continue;
                        }
                        (false, _) => {
                            errors.push(format!("{path}: {access} calls take no permission"));
                            continue;
                        }
                    };
                    let line = format!(
                        "    MethodRule {{ path: {path:?}, access: Access::{access}, permission: {permission} }},\n"
                    );
                    rules.push((path, line));
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors.join("\n").into());
        }
        // Sorted by path, so that the per-call lookup is a binary search.
        rules.sort();
        let mut out = String::from(
            "/// Every RPC's rule, from the `steward.authz.v1.rule` options, sorted by path.\n",
        );
        out += "pub const RULES: &[MethodRule] = &[\n";
        out.extend(rules.into_iter().map(|(_, line)| line));
        out += "];\n\n/// Every permission, in declaration order, from the `steward.authz.v1.info` options.\n";
        out += "pub const PERMISSIONS: &[CatalogEntry] = &[\n";
        for (_, variant, info) in &catalog {
            out += &format!(
                "    CatalogEntry {{ permission: Permission::{variant}, name: {:?}, description: {:?} }},\n",
                info.name, info.description
            );
        }
        out += "];\n";
        Ok(out)
    }
}
