//! The hand-off from `secretfs` to `neuro run`: the status file secretfs writes when it fails
//! to start (`secretfs --error-file PATH`), so the caller reports the failures without
//! scraping a log.
//!
//! The file is one JSON object, written atomically (a temporary file renamed over PATH):
//!
//! ```json
//! {"code":72,"errors":[{"path":"/var/x","uri":"secret://c/alice/x","class":"not found","detail":"not found"}]}
//! ```
//!
//! `code` is the exit code secretfs exits with (an [`ExitClass`] code). `errors` holds one
//! entry per failure, in mapping order: `path` is the mapped path and `uri` the secret, each
//! `null` when the failure concerns none (a refused token, a failed mount); `class` is the
//! failure's [`ExitClass::name`]; `detail` says what went wrong. No entry holds a value or a
//! token. A reader that finds no file (secretfs was killed, or failed before it could open the
//! file's directory) falls back to the exit code.

use serde::{Deserialize, Serialize};

use crate::exit::ExitClass;

/// The largest status file a reader accepts.
pub const MAX_STATUS_FILE: u64 = 1024 * 1024;

/// Why secretfs did not start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartFailure {
    pub code: u8,
    pub errors: Vec<FailedItem>,
}

/// One failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedItem {
    pub path: Option<String>,
    pub uri: Option<String>,
    pub class: String,
    pub detail: String,
}

impl FailedItem {
    pub fn new(class: ExitClass, detail: impl Into<String>) -> Self {
        Self {
            path: None,
            uri: None,
            class: class.name().to_owned(),
            detail: detail.into(),
        }
    }

    /// The item as one line: `PATH: URI: DETAIL`, without the parts it lacks, its control
    /// characters escaped (the detail may quote the service).
    pub fn line(&self) -> String {
        let mut out = String::new();
        for part in [&self.path, &self.uri].into_iter().flatten() {
            out.push_str(part);
            out.push_str(": ");
        }
        out.push_str(&self.detail);
        crate::exit::escape_control(&out).into_owned()
    }
}

impl StartFailure {
    /// The exit class of `code`; [`ExitClass::Other`] for a code outside the table.
    pub fn class(&self) -> ExitClass {
        ExitClass::from_code(i32::from(self.code)).unwrap_or(ExitClass::Other)
    }

    /// Every item's line, joined with `; `.
    pub fn summary(&self) -> String {
        self.errors
            .iter()
            .map(FailedItem::line)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented shape, field by field: a change here breaks `neuro run` against an
    /// older or newer secretfs.
    #[test]
    fn the_documented_format() {
        let raw = r#"{"code":72,"errors":[{"path":"/var/x","uri":"secret://c/alice/x","class":"not found","detail":"not found"},{"path":null,"uri":null,"class":"other","detail":"mount failed"}]}"#;
        let f: StartFailure = serde_json::from_str(raw).unwrap();
        assert_eq!(f.class(), ExitClass::NotFound);
        assert_eq!(
            f.summary(),
            "/var/x: secret://c/alice/x: not found; mount failed"
        );
        assert_eq!(serde_json::to_string(&f).unwrap(), raw);
        let odd = StartFailure {
            code: 3,
            errors: vec![],
        };
        assert_eq!(odd.class(), ExitClass::Other);
    }
}
