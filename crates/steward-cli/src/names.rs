//! Resource names: bare IDs given on the command line are expanded within the session's
//! organization.

/// `organizations/{id}` for a bare ID; a full name is returned unchanged.
pub fn organization(input: &str) -> String {
    if input.starts_with("organizations/") {
        input.to_string()
    } else {
        format!("organizations/{input}")
    }
}

/// Expands `input` to `{org}/{collection}/{id}`. A name starting with `organizations/` is kept
/// as given; `{collection}/{id}` and a bare `{id}` (which may itself contain sub-collections,
/// as in `C/grants/G`) are put under `org`.
pub fn expand(org: &str, collection: &str, input: &str) -> String {
    if input.starts_with("organizations/") {
        return input.to_string();
    }
    let prefix = format!("{collection}/");
    let id = input.strip_prefix(&prefix).unwrap_or(input);
    format!("{org}/{collection}/{id}")
}

/// The last path segment of a resource name (its ID).
pub fn id(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_bare_ids_and_keeps_full_names() {
        let org = "organizations/o1";
        assert_eq!(expand(org, "administrators", "a1"), "organizations/o1/administrators/a1");
        assert_eq!(
            expand(org, "administrators", "administrators/a1"),
            "organizations/o1/administrators/a1"
        );
        assert_eq!(
            expand(org, "administrators", "organizations/o2/administrators/a1"),
            "organizations/o2/administrators/a1"
        );
        assert_eq!(expand(org, "commands", "c/grants/g"), "organizations/o1/commands/c/grants/g");
        assert_eq!(organization("o1"), "organizations/o1");
        assert_eq!(organization("organizations/o1"), "organizations/o1");
        assert_eq!(id("organizations/o1/runs/r9"), "r9");
    }
}
