//! `Failure`, a failure with the exit class it maps to and what failed, and `exit_class`, the
//! one walk from an error chain to its exit class, which `neuro` and `secretfs` share.

use std::error::Error;

use secrets_core::handoff::FailedItem;
use secrets_core::{ExitClass, MappingError, NameError, UriError};

use crate::conn::TokenError;
use crate::error::ClientError;

/// A failure with its exit class and what failed: one item per failed mapping, or one item
/// that concerns no single mapping. It displays as the items' lines (`PATH: URI: DETAIL`,
/// control characters escaped), joined with `; `.
#[derive(Debug, thiserror::Error)]
#[error("{}", lines(items))]
pub struct Failure {
    pub class: ExitClass,
    pub items: Vec<FailedItem>,
}

fn lines(items: &[FailedItem]) -> String {
    items
        .iter()
        .map(FailedItem::line)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Failure {
    /// A failure of one class that concerns no single mapping.
    pub fn new(class: ExitClass, message: impl Into<String>) -> Self {
        Failure {
            class,
            items: vec![FailedItem::new(class, message)],
        }
    }
}

/// The exit class of `e`: that of the first error in its chain (`e`, then each `source()`,
/// as `anyhow::Error::chain` walks) that has one, else [`ExitClass::Other`]. A [`Failure`]
/// has its own; a [`ClientError`] and a [`TokenError`] theirs; a malformed name, URI or
/// mapping is invalid input; `local` gives the class of a binary's own errors (`None`: none).
pub fn exit_class(
    e: &(dyn Error + 'static),
    local: impl Fn(&(dyn Error + 'static)) -> Option<ExitClass>,
) -> ExitClass {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(class) = class_of(c).or_else(|| local(c)) {
            return class;
        }
        cause = c.source();
    }
    ExitClass::Other
}

fn class_of(c: &(dyn Error + 'static)) -> Option<ExitClass> {
    if let Some(f) = c.downcast_ref::<Failure>() {
        return Some(f.class);
    }
    if let Some(e) = c.downcast_ref::<ClientError>() {
        return Some(ExitClass::from(e));
    }
    if let Some(e) = c.downcast_ref::<TokenError>() {
        return Some(e.class());
    }
    if c.is::<NameError>() || c.is::<UriError>() || c.is::<MappingError>() {
        return Some(ExitClass::Invalid);
    }
    None
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use secrets_core::{ExitClass, SecretKey};

    use super::*;

    /// An error with a cause, as `anyhow`'s context makes one.
    #[derive(Debug)]
    struct Context(&'static str, Box<dyn Error + 'static>);

    impl fmt::Display for Context {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Context {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.1)
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("local")]
    struct Local;

    #[track_caller]
    fn check(e: Box<dyn Error + 'static>, expected: ExitClass) {
        let local = |c: &(dyn Error + 'static)| c.is::<Local>().then_some(ExitClass::NotFound);
        assert_eq!(exit_class(&*e, local), expected, "{e}");
        // Under a context, the same.
        let wrapped = Context("while doing it", e);
        assert_eq!(exit_class(&wrapped, local), expected, "{wrapped}");
    }

    #[test]
    fn the_first_error_with_a_class_decides() {
        let status = |status| ClientError::Status {
            status,
            message: String::new(),
            missing: Vec::new(),
        };
        check(
            Box::new(Failure::new(ExitClass::Forbidden, "x")),
            ExitClass::Forbidden,
        );
        check(Box::new(status(404)), ExitClass::NotFound);
        check(Box::new(status(503)), ExitClass::Unavailable);
        check(Box::new(TokenError::Missing), ExitClass::Forbidden);
        let bad_key = SecretKey::new("..k").unwrap_err();
        check(Box::new(bad_key), ExitClass::Invalid);
        check(Box::new(Local), ExitClass::NotFound);
        check(Box::new(std::io::Error::other("disk")), ExitClass::Other);
    }

    #[test]
    fn a_failure_displays_its_items_escaped() {
        let mut f = Failure::new(ExitClass::NotFound, "not found");
        f.items[0].path = Some("/a".into());
        f.items
            .push(FailedItem::new(ExitClass::Forbidden, "no\x1b[31m"));
        assert_eq!(f.to_string(), "/a: not found; no\\x1b[31m");
    }
}
