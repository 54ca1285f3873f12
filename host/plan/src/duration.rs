//! Humane durations (`"15m"`, `"1h30m"`, `"500ms"`) used for RTO, RPO, timeouts and backoff.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written the way people write them: a sequence of `<number><unit>` with
/// units `d` (days), `h`, `m`, `s` and `ms`, e.g. `"15m"`, `"1h30m"`, `"90s"`, `"0s"`.
///
/// The canonical form (used by [`fmt::Display`] and serialisation) normalises the value
/// into the largest units, so `"90s"` is written back as `"1m30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration {
    millis: u64,
}

/// Why a duration text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text was empty.
    #[error("empty duration (expected e.g. \"15m\" or \"1h30m\")")]
    Empty,
    /// A number was not followed by a unit, or the unit is unknown.
    #[error("bad duration {0:?}: expected numbers with units d, h, m, s or ms, e.g. \"1h30m\"")]
    Syntax(String),
    /// The value does not fit in 64-bit milliseconds.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

impl HumanDuration {
    /// A duration of `millis` milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Self { millis }
    }

    /// A duration of `secs` seconds (saturating).
    pub const fn from_secs(secs: u64) -> Self {
        Self {
            millis: secs.saturating_mul(1000),
        }
    }

    /// The length in milliseconds.
    pub const fn as_millis(&self) -> u64 {
        self.millis
    }

    /// The equivalent [`std::time::Duration`].
    pub const fn to_std(&self) -> Duration {
        Duration::from_millis(self.millis)
    }

    /// Whether this duration is zero.
    pub const fn is_zero(&self) -> bool {
        self.millis == 0
    }
}

impl FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let s = text.trim();
        if s.is_empty() {
            return Err(DurationError::Empty);
        }
        let syntax = || DurationError::Syntax(text.to_string());
        let overflow = || DurationError::Overflow(text.to_string());
        let bytes = s.as_bytes();
        let mut i = 0;
        let mut total: u64 = 0;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if start == i {
                return Err(syntax());
            }
            let number: u64 = s[start..i].parse().map_err(|_| overflow())?;
            let unit_start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            let factor: u64 = match &s[unit_start..i] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(syntax()),
            };
            let part = number.checked_mul(factor).ok_or_else(overflow)?;
            total = total.checked_add(part).ok_or_else(overflow)?;
        }
        Ok(Self { millis: total })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.millis == 0 {
            return f.write_str("0s");
        }
        let mut rest = self.millis;
        for (unit, size) in [
            ("d", 86_400_000u64),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
            ("ms", 1),
        ] {
            let n = rest / size;
            if n > 0 {
                write!(f, "{n}{unit}")?;
                rest %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let d: HumanDuration = "90s".parse().unwrap();
        assert_eq!(d.as_millis(), 90_000);
        assert_eq!(d.to_string(), "1m30s");
        assert_eq!(
            "1h30m".parse::<HumanDuration>().unwrap().to_string(),
            "1h30m"
        );
        assert_eq!(
            "1d2h3m4s5ms".parse::<HumanDuration>().unwrap().as_millis(),
            93_784_005
        );
        assert_eq!("0s".parse::<HumanDuration>().unwrap().to_string(), "0s");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "15",
            "m",
            "15x",
            "1h 30m",
            "-5m",
            "99999999999999999999d",
            "1.5h",
        ] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad}");
        }
    }
}
