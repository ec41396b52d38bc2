//! Durations as operators write them: `500ms`, `3s`, `2m`, `1h 30m`.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A span of time read from a human-readable string such as `500ms`, `3s`
/// or `2m`. Bare numbers are refused: a unit is always required, so that
/// `timeout = 3` can never silently mean three milliseconds or three hours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(std::time::Duration);

impl Duration {
    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    /// A duration of `s` seconds.
    pub const fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }

    /// The standard library value.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }

    /// Whether this is zero.
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Self(d)
    }
}

/// Why a duration string was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid duration `{input}`: {reason} (write it as e.g. `500ms`, `3s`, `2m`)")]
pub struct ParseDurationError {
    input: String,
    reason: String,
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        if !trimmed.is_empty() && trimmed.chars().all(|c| c.is_ascii_digit()) {
            return Err(ParseDurationError {
                input: s.to_owned(),
                reason: "a unit is required".to_owned(),
            });
        }
        humantime::parse_duration(trimmed)
            .map(Self)
            .map_err(|e| ParseDurationError {
                input: s.to_owned(),
                reason: e.to_string(),
            })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"500ms\", \"3s\" or \"2m\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration with a unit: `500ms`, `3s`, `2m`, `1h 30m`.",
            "pattern": "^\\s*([0-9]+\\s*[a-zA-Zµ]+\\s*)+$",
            "examples": ["500ms", "3s", "2m"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_units_operators_write() {
        assert_eq!(
            "500ms".parse::<Duration>().ok(),
            Some(Duration::from_millis(500))
        );
        assert_eq!("3s".parse::<Duration>().ok(), Some(Duration::from_secs(3)));
        assert_eq!(
            "2m".parse::<Duration>().ok(),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            "1h 30m".parse::<Duration>().ok(),
            Some(Duration::from_secs(5400))
        );
    }

    #[test]
    fn refuses_bare_numbers_and_garbage() {
        assert!("3".parse::<Duration>().is_err());
        assert!("three seconds".parse::<Duration>().is_err());
        assert!("".parse::<Duration>().is_err());
        assert!("-1s".parse::<Duration>().is_err());
    }

    #[test]
    fn display_round_trips() {
        for s in ["500ms", "3s", "2m", "1h 30m", "0s"] {
            let d: Duration = s.parse().unwrap_or_default();
            assert_eq!(d.to_string().parse::<Duration>().ok(), Some(d), "{s}");
        }
    }
}
