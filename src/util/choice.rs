//! Enums a user picks by name: a backbone, a schedule, a precision. Each lists its values once
//! ([`Choice::CHOICES`]: name, other spellings, a line of help); parsing, printing and the CLI's
//! `[possible values: ...]` all read that list, so the library needs no command-line crate.

/// One value of a [`Choice`] enum and how people write it.
pub struct Named<T: 'static> {
    pub value: T,
    /// The canonical spelling (what [`Choice::name`] gives back).
    pub name: &'static str,
    /// Other accepted spellings.
    pub aliases: &'static [&'static str],
    /// One line describing the value (shown by `--help`).
    pub help: &'static str,
}

/// A name that is none of a [`Choice`]'s values.
#[derive(Debug, thiserror::Error)]
#[error("'{given}' is not one of {expected}")]
pub struct UnknownChoice {
    pub given: String,
    /// The valid names, comma-separated.
    pub expected: String,
}

pub trait Choice: Copy + PartialEq + 'static {
    /// Every value, in the order they are listed.
    const CHOICES: &'static [Named<Self>];

    /// The canonical name of this value.
    fn name(self) -> &'static str {
        Self::CHOICES.iter().find(|c| c.value == self).map_or("?", |c| c.name)
    }

    /// The value named `s` (its name or an alias, any letter case, surrounding spaces ignored).
    fn from_name(s: &str) -> Result<Self, UnknownChoice> {
        let s = s.trim();
        Self::CHOICES
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(s) || c.aliases.iter().any(|a| a.eq_ignore_ascii_case(s)))
            .map(|c| c.value)
            .ok_or_else(|| UnknownChoice { given: s.to_string(), expected: Self::CHOICES.iter().map(|c| c.name).collect::<Vec<_>>().join(", ") })
    }
}
