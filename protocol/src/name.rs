//! User and room names: what people type, checked once at the edge and trusted after.
//!
//! A name is `[a-z0-9_.-]`, 1 to 32 characters for users and 1 to 64 for rooms, and starts with a
//! letter, a digit or `_`: a name is also a command-line argument and part of file names, where
//! `-x` reads as an option and `.`, `..` or `.x` as a directory or a hidden file. Parsing what a
//! person typed folds ASCII capitals to lower case (`Alice` is `alice`); decoding from the wire is
//! strict, so every name has exactly one spelling on the wire and in storage.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a name was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("a {kind} name cannot be empty")]
    Empty { kind: &'static str },
    #[error("a {kind} name has at most {max} characters, {got:?} has {len}")]
    TooLong {
        kind: &'static str,
        got: String,
        len: usize,
        max: usize,
    },
    #[error(
        "{got:?} is not a valid {kind} name: {bad:?} is not allowed (use a-z, 0-9, '_', '.', '-')"
    )]
    BadCharacter {
        kind: &'static str,
        got: String,
        bad: char,
    },
    #[error("{got:?} is not a valid {kind} name: it must start with a letter, a digit or '_'")]
    BadStart { kind: &'static str, got: String },
}

fn check(kind: &'static str, max: usize, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '.' | '-'))
    {
        return Err(NameError::BadCharacter {
            kind,
            got: name.to_owned(),
            bad,
        });
    }
    if name.starts_with(['.', '-']) {
        return Err(NameError::BadStart {
            kind,
            got: name.to_owned(),
        });
    }
    let len = name.len();
    if len > max {
        return Err(NameError::TooLong {
            kind,
            got: name.to_owned(),
            len,
            max,
        });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            /// The longest name allowed, in characters.
            pub const MAX_LEN: usize = $max;

            /// Accepts exactly the canonical spelling (what the wire and the store carry).
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                check($kind, $max, &name)?;
                Ok(Self(name))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        /// Parses what a person typed: surrounding spaces trimmed, capitals folded to lower case.
        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(typed: &str) -> Result<Self, NameError> {
                Self::new(typed.trim().to_ascii_lowercase())
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(name: String) -> Result<Self, NameError> {
                Self::new(name)
            }
        }

        impl From<$ty> for String {
            fn from(name: $ty) -> String {
                name.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), self.0)
            }
        }
    };
}

name_type!(
    /// A user name, bound to one identity key at a rendezvous server.
    UserName, "user", 32
);
name_type!(
    /// A room's human name; the room itself is identified by its [`crate::wire::RoomId`].
    RoomName, "room", 64
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_names_are_folded_to_lower_case_and_trimmed() {
        assert_eq!(
            "  Alice ".parse::<UserName>().map(|n| n.to_string()),
            Ok("alice".into())
        );
        assert_eq!(
            UserName::new("Alice"),
            Err(NameError::BadCharacter {
                kind: "user",
                got: "Alice".into(),
                bad: 'A'
            })
        );
    }

    #[test]
    fn names_outside_the_alphabet_or_length_are_refused_with_the_reason() {
        assert!(UserName::new("bob_the.builder-2").is_ok());
        assert_eq!(UserName::new(""), Err(NameError::Empty { kind: "user" }));
        assert!(matches!(
            UserName::new("a".repeat(33)),
            Err(NameError::TooLong { len: 33, .. })
        ));
        assert!(UserName::new("a".repeat(32)).is_ok());
        assert!(matches!(
            UserName::new("bob smith"),
            Err(NameError::BadCharacter { bad: ' ', .. })
        ));
        assert!(matches!(
            UserName::new("zoë"),
            Err(NameError::BadCharacter { bad: 'ë', .. })
        ));
        assert!(RoomName::new("r".repeat(64)).is_ok());
        assert!(RoomName::new("r".repeat(65)).is_err());
        for unsafe_name in [".", "..", ".hidden", "-dash", "--help"] {
            assert!(
                matches!(UserName::new(unsafe_name), Err(NameError::BadStart { .. })),
                "{unsafe_name}"
            );
            assert!(RoomName::new(unsafe_name).is_err(), "{unsafe_name}");
        }
        assert!(UserName::new("_bot").is_ok() && UserName::new("a.-b").is_ok());
        let err = "bob!".parse::<UserName>().unwrap_err().to_string();
        assert!(err.contains("'!'") && err.contains("a-z"), "{err}");
    }
}
