//! Quoting what a client sent (resource names, digests, paths, instance
//! names) in status messages and log lines: at most [`LIMIT`] bytes of it,
//! and how long it was. A 1 MB resource name quoted whole made a 2 MB
//! status that clients dropped ("Stream removed") instead of showing.

use std::fmt;

/// Bytes of client input quoted at most.
pub const LIMIT: usize = 200;

/// Client input, cut for quoting. `Debug` and `Display` both print it
/// quoted, as `{:?}` prints a string, followed by `… (N bytes)` when it
/// was cut.
#[derive(Clone, PartialEq, Eq)]
pub struct Quoted {
    head: String,
    len: usize,
}

impl Quoted {
    pub fn new(s: &str) -> Quoted {
        let mut end = s.len().min(LIMIT);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        Quoted {
            head: s[..end].to_owned(),
            len: s.len(),
        }
    }

    /// Whether the whole input is kept.
    pub fn is_whole(&self) -> bool {
        self.head.len() == self.len
    }
}

impl From<&str> for Quoted {
    fn from(s: &str) -> Quoted {
        Quoted::new(s)
    }
}

impl fmt::Display for Quoted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.head)?;
        if !self.is_whole() {
            write!(f, "… ({} bytes)", self.len)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Quoted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Quotes client input: `format!("{}", quote(name))`.
pub fn quote(s: &str) -> Quoted {
    Quoted::new(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_quoted_whole_and_long_input_is_cut() {
        assert_eq!(quote("a\"b").to_string(), "\"a\\\"b\"");
        let long = "é".repeat(1 << 19); // 1 MiB, two bytes a character
        let q = quote(&long).to_string();
        assert!(q.len() < LIMIT + 40, "{}", q.len());
        assert!(q.ends_with("… (1048576 bytes)"), "{q}");
        assert_eq!(format!("{:?}", quote("x")), "\"x\"");
    }
}
