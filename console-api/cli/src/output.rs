//! Tables for people, JSON for scripts (`--output json` prints the console's answer as is).

use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{ContentArrangement, Table};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// One column: its header and where its value is in each item (a `/`-separated path).
pub type Column = (&'static str, &'static str);

pub const NETWORK_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("MODE", "mode"),
    ("SHARDS", "spec/shards/count"),
    ("PHASE", "phase"),
    ("GENERATION", "generation"),
    ("CREATED", "created_at"),
];

pub const MEMBER_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("ORGANISATION", "organisation"),
    ("NODES", "nodes"),
    ("STATE", "state"),
    ("KEY", "key_custody"),
    ("APPROVALS", "approvals"),
    ("REMOVAL", "removal_approvals"),
    ("YOURS", "controlled_by_caller"),
];

/// Invitations a network sent (or one of them).
pub const INVITATION_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("ORGANISATION", "organisation"),
    ("MEMBER", "member_id"),
    ("STATUS", "status"),
    ("FOR TENANT", "invited_tenant_id"),
    ("EXPIRES", "expires_at"),
];

/// Invitations a tenant received: they come from several networks.
pub const RECEIVED_INVITATION_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("NETWORK", "network_id"),
    ("ORGANISATION", "organisation"),
    ("MEMBER", "member_id"),
    ("STATUS", "status"),
    ("EXPIRES", "expires_at"),
];

/// The value at `path` as display text (`-` when absent).
pub fn at(item: &Value, path: &str) -> String {
    let mut v = item;
    for key in path.split('/') {
        match v.get(key) {
            Some(next) => v = next,
            None => return "-".into(),
        }
    }
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The answer's `items` array (e.g. `items`, `records`, `lines`) as a table with
/// `columns`.
pub fn list(format: Format, answer: &Value, items: &str, columns: &[Column]) -> String {
    match format {
        Format::Json => pretty(answer),
        Format::Table => {
            let mut table = new_table();
            table.set_header(columns.iter().map(|(h, _)| *h));
            for item in answer[items].as_array().into_iter().flatten() {
                table.add_row(columns.iter().map(|(_, p)| at(item, p)));
            }
            table.to_string()
        }
    }
}

/// An answer a person reads as a sentence (made only for the table format).
pub fn sentence(format: Format, answer: &Value, sentence: impl FnOnce() -> String) -> String {
    match format {
        Format::Json => pretty(answer),
        Format::Table => sentence(),
    }
}

/// One object as `FIELD  value` rows.
pub fn object(format: Format, answer: &Value, rows: &[Column]) -> String {
    match format {
        Format::Json => pretty(answer),
        Format::Table => {
            let mut table = new_table();
            for (header, path) in rows {
                table.add_row(vec![header.to_string(), at(answer, path)]);
            }
            table.to_string()
        }
    }
}

pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn new_table() -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Disabled);
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_and_missing_values() {
        let item = json!({"id": "n1", "spec": {"shards": {"count": 2}}, "status": null});
        assert_eq!(at(&item, "spec/shards/count"), "2");
        assert_eq!(at(&item, "id"), "n1");
        assert_eq!(at(&item, "status/epoch"), "-");
        assert_eq!(at(&item, "nope"), "-");
        let answer = json!({ "items": [item] });
        let table = list(Format::Table, &answer, "items", NETWORK_COLUMNS);
        assert!(table.contains("SHARDS") && table.contains("n1"), "{table}");
        assert_eq!(
            list(Format::Json, &answer, "items", NETWORK_COLUMNS),
            pretty(&answer)
        );
        let empty = list(Format::Table, &json!({}), "items", NETWORK_COLUMNS);
        assert!(empty.contains("SHARDS") && !empty.contains("n1"), "{empty}");
        let said = sentence(Format::Table, &answer, || "one network".into());
        assert_eq!(said, "one network");
        assert_eq!(
            sentence(Format::Json, &answer, || unreachable!()),
            pretty(&answer)
        );
    }
}
