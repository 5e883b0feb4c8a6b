//! The value types of the configuration file: sizes, durations and file
//! modes, each written as the file's reader expects (`"50GiB"`, `"10m"`,
//! `"0660"`), with messages that say what was expected and what was found.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// A size in bytes: an integer, or a string such as `"512MiB"` or `"10G"`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl ByteSize {
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{s:?} is not a size such as 4096, \"512MiB\" or \"10G\""))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" | "k" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "T" | "TiB" => 1 << 40,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            other => {
                return Err(format!(
                    "unknown size unit {other:?} in {s:?}; use B, KiB, MiB, GiB, TiB (or K, M, G, T) or KB, MB, GB, TB"
                ));
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

/// A value written either as a non-negative integer or as a string with a
/// unit: sizes and durations. In the file a string must carry its unit
/// (`"8"` is refused: 8 what?); an integer is bytes or seconds.
struct IntOrUnit<T> {
    /// What serde's messages say was expected, e.g. `a size such as "50GiB"`.
    expecting: &'static str,
    from_int: fn(u64) -> T,
    parse: fn(&str) -> Result<T, String>,
    /// The unit an integer is in, for the hint on a string without one.
    int_unit: &'static str,
}

impl<T> serde::de::Visitor<'_> for IntOrUnit<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<T, E> {
        Ok((self.from_int)(n))
    }

    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<T, E> {
        u64::try_from(n).map(self.from_int).map_err(|_| {
            E::custom(format!(
                "expected {}, got {n}, which is negative",
                self.expecting
            ))
        })
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<T, E> {
        if !s.trim().is_empty() && s.trim().bytes().all(|b| b.is_ascii_digit()) {
            return Err(E::custom(format!(
                "expected {}, got the string {s:?}: a string needs a unit (write {} for {}, or add the unit you mean)",
                self.expecting,
                s.trim(),
                self.int_unit
            )));
        }
        (self.parse)(s).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IntOrUnit {
            expecting: "a size such as \"50GiB\" or an integer number of bytes",
            from_int: ByteSize,
            parse: ByteSize::parse,
            int_unit: "bytes",
        })
    }
}

/// A duration: an integer number of seconds, or a string such as `"90s"`,
/// `"10m"` or `"2h"`. Zero disables whatever it times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationValue(pub Duration);

impl DurationValue {
    pub fn parse(s: &str) -> Result<DurationValue, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits.parse().map_err(|_| {
            format!("{s:?} is not a duration such as 30, \"90s\", \"10m\" or \"2h\"")
        })?;
        let secs = match unit.trim() {
            "" | "s" => Some(n),
            "ms" => return Ok(DurationValue(Duration::from_millis(n))),
            "m" | "min" => n.checked_mul(60),
            "h" => n.checked_mul(3600),
            "d" => n.checked_mul(86400),
            other => {
                return Err(format!(
                    "unknown duration unit {other:?} in {s:?}; use ms, s, m, h or d"
                ));
            }
        };
        secs.map(|s| DurationValue(Duration::from_secs(s)))
            .ok_or_else(|| format!("{s:?} is too long"))
    }
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IntOrUnit {
            expecting: "a duration such as \"90s\" or \"10m\", or an integer number of seconds",
            from_int: |n| DurationValue(Duration::from_secs(n)),
            parse: DurationValue::parse,
            int_unit: "seconds",
        })
    }
}

/// Unix permission bits written as an octal string, such as `"0660"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Octal;
        impl serde::de::Visitor<'_> for Octal {
            type Value = FileMode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an octal mode in a string, such as \"0660\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<FileMode, E> {
                u32::from_str_radix(s, 8).map(FileMode).map_err(|_| {
                    E::custom(format!(
                        "expected an octal mode such as \"0660\", got the string {s:?}"
                    ))
                })
            }
        }
        d.deserialize_any(Octal)
    }
}
