//! Names users give to things: sets, models, annotation rounds, branches and tags, and the rule
//! every name stored in a version obeys.
//!
//! Names become paths (`sets/<name>.json`, `models/<name>.json`, `<set>-gallery.png`,
//! `refs/heads/<name>`) and are looked up by verbs, so a name is one plain path component that
//! no verb reads as something else. [`Name::new`] is the rule for a name a verb is about to
//! create; [`check_stored`] is the weaker rule the manifest loader and writer apply to every
//! name in a version (it also admits what older biodc versions accepted, e.g. spaces, but never
//! a path separator, `.`, `..` or a control character).

use std::fmt;

/// What a name names; decides the reserved words and the wording of errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    Set,
    Model,
    Round,
    Branch,
    Tag,
    Stack,
}

impl NameKind {
    pub fn noun(self) -> &'static str {
        match self {
            NameKind::Set => "set",
            NameKind::Model => "model",
            NameKind::Round => "round",
            NameKind::Branch => "branch",
            NameKind::Tag => "tag",
            NameKind::Stack => "stack",
        }
    }

    /// Words a name of this kind may not be, and what they mean instead.
    fn reserved(self) -> &'static [(&'static str, &'static str)] {
        match self {
            NameKind::Set => &[("all", "`--set all` means every patch")],
            NameKind::Model => &[("none", "`--from none` means random weights")],
            NameKind::Branch | NameKind::Tag => &[("HEAD", "HEAD is the current version")],
            NameKind::Round | NameKind::Stack => &[],
        }
    }
}

/// Longest name a verb accepts.
pub const MAX_LEN: usize = 100;

/// A valid name (see [`Name::new`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Name(String);

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {} name {name:?}: {reason}", kind.noun())]
pub struct NameError {
    pub kind: NameKind,
    pub name: String,
    pub reason: String,
}

impl Name {
    /// Checks a new name: 1 to 100 ASCII letters, digits, `_`, `-` and `.`, starting with a
    /// letter, digit or `_`, without `..`, not ending in `.` or `.lock`, and not a word the
    /// verbs reserve (`all` for sets, `none` for models, `HEAD` for branches and tags).
    pub fn new(kind: NameKind, name: &str) -> Result<Name, NameError> {
        let refuse = |reason: String| NameError {
            kind,
            name: name.to_string(),
            reason,
        };
        if name.is_empty() {
            return Err(refuse("a name cannot be empty".into()));
        }
        if name.len() > MAX_LEN {
            return Err(refuse(format!("longer than {MAX_LEN} characters")));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "_-.".contains(*c)))
        {
            return Err(refuse(format!(
                "{c:?} is not allowed (use letters, digits, `_`, `-` and `.`)"
            )));
        }
        if name.starts_with(['.', '-']) {
            return Err(refuse("must start with a letter, a digit or `_`".into()));
        }
        if name.contains("..") || name.ends_with('.') || name.ends_with(".lock") {
            return Err(refuse(
                "may not contain `..` or end in `.` or `.lock`".into(),
            ));
        }
        if let Some((word, why)) = kind
            .reserved()
            .iter()
            .find(|(w, _)| w.eq_ignore_ascii_case(name))
        {
            return Err(refuse(format!("{word:?} is reserved: {why}")));
        }
        Ok(Name(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

/// The rule for every name stored in a version (set, model, embedding and stack names; see the
/// module comment): non-empty, at most 255 bytes, one path component (no `/` or `\`, not `.`
/// or `..`), no control characters.
pub fn check_stored(kind: NameKind, name: &str) -> Result<(), NameError> {
    let refuse = |reason: &str| {
        Err(NameError {
            kind,
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() {
        return refuse("a name cannot be empty");
    }
    if name.len() > 255 {
        return refuse("longer than 255 bytes");
    }
    if name == "." || name == ".." {
        return refuse("`.` and `..` name folders, not things");
    }
    if name.contains(['/', '\\']) {
        return refuse("a name cannot contain `/` or `\\`");
    }
    if name.chars().any(char::is_control) {
        return refuse("a name cannot contain control characters");
    }
    Ok(())
}

/// clap value parsers, one per kind.
pub fn set(s: &str) -> Result<Name, NameError> {
    Name::new(NameKind::Set, s)
}

pub fn model(s: &str) -> Result<Name, NameError> {
    Name::new(NameKind::Model, s)
}

pub fn round(s: &str) -> Result<Name, NameError> {
    Name::new(NameKind::Round, s)
}

pub fn branch(s: &str) -> Result<Name, NameError> {
    Name::new(NameKind::Branch, s)
}

pub fn tag(s: &str) -> Result<Name, NameError> {
    Name::new(NameKind::Tag, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_become_other_paths_or_words_are_refused() {
        for (kind, bad) in [
            (NameKind::Model, "../../../../../victim"),
            (NameKind::Model, "c/d"),
            (NameKind::Set, "a/b"),
            (NameKind::Set, ""),
            (NameKind::Set, "all"),
            (NameKind::Set, "ALL"),
            (NameKind::Set, "."),
            (NameKind::Set, ".."),
            (NameKind::Model, "none"),
            (NameKind::Branch, "HEAD"),
            (NameKind::Branch, "@"),
            (NameKind::Branch, "refs/heads/main"),
            (NameKind::Tag, "v1.lock"),
            (NameKind::Tag, "-d"),
            (NameKind::Round, "core 2"),
            (NameKind::Round, "a\nb"),
        ] {
            assert!(Name::new(kind, bad).is_err(), "{kind:?} {bad:?} accepted");
        }
        for (kind, good) in [
            (NameKind::Set, "coreset"),
            (NameKind::Set, "candidates-1"),
            (NameKind::Set, "coreset-kcenter"),
            (NameKind::Model, "M0"),
            (NameKind::Model, "mae"),
            (NameKind::Round, "critical-1"),
            (NameKind::Round, "manual-fix"),
            (NameKind::Branch, "relabel_round2"),
            (NameKind::Tag, "v1.2"),
            (NameKind::Set, "none"),
            (NameKind::Model, "all"),
        ] {
            assert!(Name::new(kind, good).is_ok(), "{kind:?} {good:?} refused");
        }
        let e = Name::new(NameKind::Set, "all").unwrap_err().to_string();
        assert!(
            e.contains("invalid set name \"all\"") && e.contains("every patch"),
            "{e}"
        );
    }

    #[test]
    fn stored_names_are_single_path_components() {
        for bad in ["", ".", "..", "a/b", "../x", "a\\b", "a\u{0}b"] {
            assert!(check_stored(NameKind::Set, bad).is_err(), "{bad:?}");
        }
        for good in ["coreset", "my set", ".hidden", "all"] {
            assert!(check_stored(NameKind::Set, good).is_ok(), "{good:?}");
        }
    }
}
