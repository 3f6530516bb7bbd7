//! How `lb` reports what is not a rendered answer: errors (its own, the agent's, clap's) and
//! the local commands' results, as text on stderr/stdout, or with `-o json` as one JSON object
//! on stdout: `{"error": {"kind": ..., "field": ..., "message": ...}}`. The exit code says the
//! kind either way (`ErrorKind::exit_code`; 1 when no agent answers).

use std::ffi::OsString;

use serde_json::{Value, json};

use super::Format;

/// An error as `lb` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// `invalid`, `not_found`, `conflict`, `capacity`, `failed`, `denied`, `unavailable` (the
    /// agent's kinds), or `unreachable` (no agent answered).
    pub kind: String,
    /// The flag, argument or config field the error is about, when it names one.
    pub field: Option<String>,
    pub message: String,
    /// Where in a config file, for `lb config check`.
    pub at: Option<(String, usize, usize)>,
    pub exit: u8,
}

impl Failure {
    /// An error of kind `kind`; its field is read off the message where it leads with one.
    #[must_use]
    pub fn new(kind: crate::error::ErrorKind, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            kind: serde_json::to_value(kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            field: field_of(&message),
            exit: kind.exit_code(),
            message,
            at: None,
        }
    }

    /// No agent answered (or the runtime failed): exit 1.
    #[must_use]
    pub fn unreachable(message: impl Into<String>) -> Self {
        Self {
            kind: "unreachable".into(),
            field: None,
            message: message.into(),
            at: None,
            exit: 1,
        }
    }

    /// The text or JSON to print: JSON goes to stdout, text to stderr (the bool says stdout).
    #[must_use]
    pub fn render(&self, format: Format, prefix: &str) -> (String, bool) {
        match format {
            Format::Json => {
                let mut e = json!({
                    "kind": self.kind,
                    "field": self.field,
                    "message": self.message,
                });
                if let Some((file, line, column)) = &self.at {
                    e["file"] = json!(file);
                    e["line"] = json!(line);
                    e["column"] = json!(column);
                }
                (json!({ "error": e }).to_string(), true)
            }
            Format::Table => (format!("{prefix}: {}", self.message), false),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// The field an error message leads with, if it leads with one: `--flag: ...`,
/// `service[0].table_size: ...`, `<SERVICE>: ...`. Prose is not a field.
#[must_use]
pub fn field_of(message: &str) -> Option<String> {
    let (head, _) = message.split_once(": ")?;
    let looks = !head.is_empty()
        && !head.contains(' ')
        && (head.starts_with("--")
            || head.starts_with('<')
            || head
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_[].".contains(c)));
    looks.then(|| head.to_owned())
}

/// Whether the raw arguments ask for JSON (for errors clap reports before the format is
/// parsed): `-o json`, `-ojson`, `--output json`, `--output=json`.
#[must_use]
pub fn wants_json(args: &[OsString]) -> bool {
    args.iter().enumerate().any(|(i, a)| {
        let a = a.to_string_lossy();
        let next = || args.get(i + 1).is_some_and(|n| n == "json");
        a == "-ojson" || a == "--output=json" || ((a == "-o" || a == "--output") && next())
    })
}

/// A clap usage error as a [`Failure`]: kind `invalid`, the argument it is about as the
/// field, and clap's first line as the message (without its `error: ` and its usage text).
#[must_use]
pub fn usage_failure(e: &clap::Error) -> Failure {
    use clap::error::{ContextKind, ContextValue};
    let field = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    let message = first.strip_prefix("error: ").unwrap_or(first).to_owned();
    Failure {
        kind: "invalid".into(),
        field,
        message,
        at: None,
        exit: 2,
    }
}

/// A local command's success, as JSON.
#[must_use]
pub fn done_json(fields: Value) -> String {
    let mut v = json!({ "result": "done" });
    if let (Some(o), Value::Object(f)) = (v.as_object_mut(), fields) {
        o.extend(f);
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn the_field_is_read_off_the_message_only_where_it_leads() {
        assert_eq!(
            field_of("--table-size: 2 is smaller"),
            Some("--table-size".into())
        );
        assert_eq!(
            field_of("service[0].table_size: expected a whole number"),
            Some("service[0].table_size".into())
        );
        assert_eq!(field_of("service 203.0.113.10:80/tcp does not exist"), None);
        assert_eq!(field_of("no colon here"), None);
    }

    #[test]
    fn json_errors_have_kind_field_and_message() {
        let f = Failure::new(
            ErrorKind::NotFound,
            "service 203.0.113.10:81/tcp does not exist",
        );
        let (text, stdout) = f.render(Format::Json, "lb");
        assert!(stdout);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["kind"], "not_found");
        assert_eq!(v["error"]["field"], Value::Null);
        assert_eq!(
            v["error"]["message"],
            "service 203.0.113.10:81/tcp does not exist"
        );
        assert_eq!(f.exit, 3);
        let (text, stdout) = f.render(Format::Table, "lb");
        assert!(!stdout);
        assert_eq!(text, "lb: service 203.0.113.10:81/tcp does not exist");
    }

    #[test]
    fn json_is_asked_for_in_every_spelling() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(wants_json(&a(&["lb", "vip", "list", "-o", "json"])));
        assert!(wants_json(&a(&["lb", "-ojson", "vip", "list"])));
        assert!(wants_json(&a(&["lb", "--output=json", "stats"])));
        assert!(wants_json(&a(&["lb", "stats", "--output", "json"])));
        assert!(!wants_json(&a(&["lb", "stats", "-o", "table"])));
        assert!(!wants_json(&a(&["lb", "vip", "add", "json"])));
    }

    #[test]
    fn a_usage_error_names_its_argument() {
        use clap::Parser as _;
        let e = super::super::Cli::try_parse_from(["lb", "vip", "add", "203.0.113.999:80/tcp"])
            .unwrap_err();
        let f = usage_failure(&e);
        assert_eq!(f.kind, "invalid");
        assert_eq!(f.exit, 2);
        assert_eq!(f.field.as_deref(), Some("<SERVICE>"), "{f:?}");
        assert!(f.message.contains("203.0.113.999"), "{f:?}");
    }
}
