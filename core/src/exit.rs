//! Exit codes: the classes of SPEC §3, their one precedence, and the `--help` text listing them.
//!
//! Every binary maps its failures to an [`ExitClass`] and exits with [`ExitClass::code`]. When
//! several things fail at once (one secret missing, another forbidden), [`ExitClass::of`]
//! picks the class that is reported, by [`ExitClass::PRECEDENCE`].

use std::borrow::Cow;

/// `s` with its control characters (C0, DEL, C1) written as escapes: `\n`, `\r`, `\t`, and
/// `\xHH` for the others (ESC is `\x1b`). Every error line the binaries print passes through
/// it, so text from the service (or from a server that only claims to be it) cannot move the
/// cursor, recolour the terminal or forge a line of its own.
pub fn escape_control(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// What a process exit means, before the job (if any) runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitClass {
    /// 0: success.
    Ok,
    /// 1: anything not covered by another class (a mount that failed, an I/O error).
    Other,
    /// 2: the command line cannot be parsed (clap's own code).
    Usage,
    /// 65: bad input: an invalid argument value, spec, mapping or token file; a 4xx answer
    /// that is none of the below.
    Invalid,
    /// 69: the service cannot be used: connection refused, timeout, 429, 5xx, a refused TLS
    /// certificate, the wrong scheme, an answer that is not the API's.
    Unavailable,
    /// 72: a secret does not exist (404).
    NotFound,
    /// 77: not authenticated or not permitted (401/403, no token).
    Forbidden,
    /// 126: the command exists but cannot be executed.
    CannotExecute,
    /// 127: the command was not found.
    CommandNotFound,
}

impl ExitClass {
    /// Which class is reported when several occur at once: the first of this list.
    ///
    /// The order goes from what is most the caller's to fix to what only time may fix:
    /// a usage error or invalid input is wrong whatever the service says, and fixing it may
    /// change every other answer; a refused token or permission makes the per-secret answers
    /// moot; a missing secret is permanent until someone writes it. `Unavailable` comes last
    /// of the failures so that 69 always means "nothing else was wrong: retrying may succeed",
    /// which a supervisor can act on. The exec classes and `Other` never occur together with
    /// the service's classes in practice; they precede `Unavailable` for the same reason.
    /// (Before issue 10, secretfs took the highest code and secret-inject this order; the
    /// CLI never combines classes.)
    pub const PRECEDENCE: [ExitClass; 9] = [
        ExitClass::Usage,
        ExitClass::Invalid,
        ExitClass::Forbidden,
        ExitClass::NotFound,
        ExitClass::CannotExecute,
        ExitClass::CommandNotFound,
        ExitClass::Other,
        ExitClass::Unavailable,
        ExitClass::Ok,
    ];

    /// The process exit code.
    pub const fn code(self) -> u8 {
        match self {
            ExitClass::Ok => 0,
            ExitClass::Other => 1,
            ExitClass::Usage => 2,
            ExitClass::Invalid => 65,
            ExitClass::Unavailable => 69,
            ExitClass::NotFound => 72,
            ExitClass::Forbidden => 77,
            ExitClass::CannotExecute => 126,
            ExitClass::CommandNotFound => 127,
        }
    }

    /// The class of exit code `code`, when it is one of the table's (a child's status passed
    /// on, e.g. secretfs's to `neuro run`).
    pub fn from_code(code: i32) -> Option<ExitClass> {
        Self::PRECEDENCE
            .into_iter()
            .find(|c| i32::from(c.code()) == code)
    }

    /// The class's name in error lines (`VAR: URI: not found`).
    pub const fn name(self) -> &'static str {
        match self {
            ExitClass::Ok => "ok",
            ExitClass::Other => "other",
            ExitClass::Usage => "usage error",
            ExitClass::Invalid => "invalid",
            ExitClass::Unavailable => "unavailable",
            ExitClass::NotFound => "not found",
            ExitClass::Forbidden => "forbidden",
            ExitClass::CannotExecute => "cannot execute",
            ExitClass::CommandNotFound => "command not found",
        }
    }

    /// What the code means in every binary; `--help` adds each binary's specifics.
    pub const fn summary(self) -> &'static str {
        match self {
            ExitClass::Ok => "success",
            ExitClass::Other => "any other failure",
            ExitClass::Usage => "usage error",
            ExitClass::Invalid => "invalid input",
            ExitClass::Unavailable => "the service is unavailable",
            ExitClass::NotFound => "not found",
            ExitClass::Forbidden => "not authenticated or not permitted",
            ExitClass::CannotExecute => "the command cannot be executed",
            ExitClass::CommandNotFound => "the command was not found",
        }
    }

    fn rank(self) -> usize {
        Self::PRECEDENCE
            .iter()
            .position(|c| *c == self)
            .unwrap_or(Self::PRECEDENCE.len())
    }

    /// Of two classes, the one that is reported.
    #[must_use]
    pub fn combine(self, other: ExitClass) -> ExitClass {
        if other.rank() < self.rank() {
            other
        } else {
            self
        }
    }

    /// The class reported for several failures; `Ok` when there are none.
    pub fn of(classes: impl IntoIterator<Item = ExitClass>) -> ExitClass {
        classes.into_iter().fold(ExitClass::Ok, ExitClass::combine)
    }

    /// The `Exit codes:` section of a binary's `--help`: one entry per class the binary uses
    /// (`specifics`: the class and what it means there, `""` for the summary alone; a `\n`
    /// in a specific starts an indented line; keep lines under 90 columns), in the order of
    /// their codes, then the precedence among those that can occur together.
    pub fn help(specifics: &[(ExitClass, &str)]) -> String {
        let mut rows: Vec<&(ExitClass, &str)> = specifics.iter().collect();
        rows.sort_by_key(|(c, _)| c.code());
        let mut out = String::from("Exit codes:");
        for (class, specific) in rows {
            out.push_str(&format!("\n  {:<3} {}", class.code(), class.summary()));
            if !specific.is_empty() {
                out.push_str(": ");
                out.push_str(&specific.replace('\n', "\n      "));
            }
        }
        // The classes one run can report several of at once (one per secret, or the
        // request's); the others end a run alone.
        let ranked: Vec<String> = Self::PRECEDENCE
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    ExitClass::Invalid
                        | ExitClass::Forbidden
                        | ExitClass::NotFound
                        | ExitClass::Unavailable
                )
            })
            .filter(|c| specifics.iter().any(|(s, _)| s == *c))
            .map(|c| format!("{} ({})", c.name(), c.code()))
            .collect();
        if ranked.len() > 1 {
            out.push_str(&format!(
                "\nWhen several fail at once, the code is the first of:\n  {}.",
                ranked.join(", ")
            ));
        }
        out
    }
}

impl From<ExitClass> for std::process::ExitCode {
    fn from(c: ExitClass) -> Self {
        std::process::ExitCode::from(c.code())
    }
}

#[cfg(test)]
mod tests {
    use super::ExitClass::{self, *};

    #[test]
    fn from_code_finds_every_class() {
        for c in ExitClass::PRECEDENCE {
            assert_eq!(ExitClass::from_code(i32::from(c.code())), Some(c));
        }
        assert_eq!(ExitClass::from_code(3), None);
        assert_eq!(ExitClass::from_code(-1), None);
    }

    #[track_caller]
    fn check(classes: &[ExitClass], expected: ExitClass) {
        assert_eq!(
            ExitClass::of(classes.iter().copied()),
            expected,
            "{classes:?}"
        );
        // The order of the failures does not matter.
        let rev = classes.iter().rev().copied();
        assert_eq!(ExitClass::of(rev), expected, "{classes:?} reversed");
    }

    #[test]
    fn precedence() {
        check(&[], Ok);
        check(&[Unavailable], Unavailable);
        check(&[Ok, NotFound], NotFound);
        // The mix that exited 72 from secretfs and 65 from secret-inject before issue 10.
        check(&[NotFound, Invalid], Invalid);
        check(&[Unavailable, NotFound], NotFound);
        check(&[NotFound, Forbidden], Forbidden);
        check(&[Forbidden, Invalid], Invalid);
        check(&[Unavailable, Forbidden, NotFound], Forbidden);
        check(&[Unavailable, Invalid, Forbidden, NotFound], Invalid);
        check(&[Unavailable, Other], Other);
        check(&[Other, Invalid], Invalid);
        check(&[Unavailable, Unavailable], Unavailable);
        check(&[CommandNotFound, CannotExecute], CannotExecute);
        check(&[Invalid, Usage], Usage);
    }

    #[test]
    fn codes_are_distinct_and_every_class_is_ranked() {
        let mut codes: Vec<u8> = ExitClass::PRECEDENCE.iter().map(|c| c.code()).collect();
        codes.sort_unstable();
        assert_eq!(codes, [0, 1, 2, 65, 69, 72, 77, 126, 127]);
    }

    #[test]
    fn help_lists_codes_in_order_and_the_precedence() {
        let h = ExitClass::help(&[
            (NotFound, ""),
            (Ok, "stopped cleanly"),
            (Invalid, "a bad --volume,\nor spec"),
            (Unavailable, ""),
        ]);
        assert_eq!(
            h,
            "Exit codes:\n  0   success: stopped cleanly\n  65  invalid input: a bad --volume,\n      \
             or spec\n  69  the service is unavailable\n  72  not found\n\
             When several fail at once, the code is the first of:\n  invalid (65), not found \
             (72), unavailable (69)."
        );
    }
}
