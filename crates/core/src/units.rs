//! Human units for configuration: durations like `"90s"`, `"10m"`, `"5d"` and sizes like
//! `"25MB"`, `"512KiB"`. Plain integers are accepted too (seconds, bytes).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A value in a configuration file could not be read as a duration or size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// The number part is missing or not a number.
    #[error("{input:?} is not a number followed by a unit")]
    NotANumber {
        /// What was given.
        input: String,
    },
    /// The unit is not one we know.
    #[error("unknown unit {unit:?} in {input:?} (expected {expected})")]
    UnknownUnit {
        /// What was given.
        input: String,
        /// The unit part.
        unit: String,
        /// The units that would have been accepted.
        expected: &'static str,
    },
    /// The value does not fit.
    #[error("{input:?} is too large")]
    Overflow {
        /// What was given.
        input: String,
    },
}

fn split(input: &str) -> Result<(u64, &str), UnitError> {
    let s = input.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return Err(UnitError::NotANumber {
            input: input.into(),
        });
    }
    let n = s[..digits]
        .parse::<u64>()
        .map_err(|_| UnitError::Overflow {
            input: input.into(),
        })?;
    Ok((n, s[digits..].trim()))
}

/// A duration written the human way: `ms`, `s`, `m`, `h`, `d` (no unit means seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = UnitError;
    fn from_str(input: &str) -> Result<Self, UnitError> {
        let (n, unit) = split(input)?;
        let mul_ms: u64 = match unit {
            "ms" => 1,
            "" | "s" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(UnitError::UnknownUnit {
                    input: input.into(),
                    unit: unit.into(),
                    expected: "ms, s, m, h, d",
                })
            }
        };
        let ms = n.checked_mul(mul_ms).ok_or_else(|| UnitError::Overflow {
            input: input.into(),
        })?;
        Ok(Self(Duration::from_millis(ms)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(86_400_000) && ms > 0 {
            write!(f, "{}d", ms / 86_400_000)
        } else if ms.is_multiple_of(3_600_000) && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// A size in bytes written the human way: `B`, `KB`/`MB`/`GB` (powers of 1000) or
/// `KiB`/`MiB`/`GiB` (powers of 1024); no unit means bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = UnitError;
    fn from_str(input: &str) -> Result<Self, UnitError> {
        let (n, unit) = split(input)?;
        let mul: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "m" | "mb" => 1_000_000,
            "g" | "gb" => 1_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            _ => {
                return Err(UnitError::UnknownUnit {
                    input: input.into(),
                    unit: unit.into(),
                    expected: "B, KB, MB, GB, KiB, MiB, GiB",
                })
            }
        };
        n.checked_mul(mul)
            .map(Self)
            .ok_or_else(|| UnitError::Overflow {
                input: input.into(),
            })
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (div, unit) in [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
            if n >= div && n.is_multiple_of(div) {
                return write!(f, "{}{unit}", n / div);
            }
        }
        for (div, unit) in [(1_000_000_000, "GB"), (1_000_000, "MB"), (1_000, "KB")] {
            if n >= div && n.is_multiple_of(div) {
                return write!(f, "{}{unit}", n / div);
            }
        }
        write!(f, "{n}B")
    }
}

macro_rules! serde_via_str {
    ($t:ty, $what:literal) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$t, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$t, E> {
                        v.to_string().parse().map_err(E::custom)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$t, E> {
                        if v < 0 {
                            return Err(E::custom(format!("{v} is negative")));
                        }
                        v.to_string().parse().map_err(E::custom)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

serde_via_str!(
    HumanDuration,
    "a duration such as \"30s\", \"10m\" or \"5d\""
);
serde_via_str!(ByteSize, "a size such as \"25MB\" or \"512KiB\"");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases = [
            ("250ms", 250),
            ("30", 30_000),
            ("30s", 30_000),
            ("10m", 600_000),
            ("2h", 7_200_000),
            ("5d", 432_000_000),
        ];
        for (s, ms) in cases {
            assert_eq!(
                s.parse::<HumanDuration>().unwrap().0,
                Duration::from_millis(ms),
                "{s}"
            );
        }
        assert!(matches!(
            "10y".parse::<HumanDuration>(),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(
            "m".parse::<HumanDuration>(),
            Err(UnitError::NotANumber { .. })
        ));
        assert_eq!(HumanDuration(Duration::from_secs(600)).to_string(), "10m");
    }

    #[test]
    fn sizes() {
        assert_eq!("25MB".parse::<ByteSize>().unwrap().0, 25_000_000);
        assert_eq!("512KiB".parse::<ByteSize>().unwrap().0, 524_288);
        assert_eq!("100".parse::<ByteSize>().unwrap().0, 100);
        assert!("99999999999999GB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(25_000_000).to_string(), "25MB");
        assert_eq!(ByteSize(1 << 20).to_string(), "1MiB");
    }
}
