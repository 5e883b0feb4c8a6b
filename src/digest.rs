//! SHA-256 content digests, parsed strictly.
//!
//! A digest names a file in the store, so anything that is not exactly 64
//! lowercase hex characters and a non-negative size is refused here, before
//! any path is built from it.

use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::proto::reapi;
use crate::quote::Quoted;

/// A validated SHA-256 digest: the hash and the size of the blob in bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hash: [u8; 32],
    size: u64,
}

/// Why a digest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error(
        "digest hash {hash:?} has {len} characters; a SHA-256 hash has 64 lowercase hex characters"
    )]
    Length { hash: Quoted, len: usize },
    #[error("digest hash {hash:?} is not lowercase hex")]
    NotHex { hash: Quoted },
    #[error("digest {hash}/{size} has a negative size")]
    NegativeSize { hash: Quoted, size: i64 },
    #[error("digest is missing")]
    Missing,
    #[error("size {size:?} in digest {hash}/{size} is not a decimal number")]
    BadSize { hash: Quoted, size: Quoted },
}

/// SHA-256 of the empty string.
const EMPTY_HASH: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

impl Digest {
    /// The digest of the empty blob, which is always present.
    pub const EMPTY: Digest = Digest {
        hash: EMPTY_HASH,
        size: 0,
    };

    pub fn new(hash: [u8; 32], size: u64) -> Self {
        Digest { hash, size }
    }

    /// Parses a hash in hex and a size as they appear in a proto `Digest`.
    pub fn parse(hash: &str, size: i64) -> Result<Self, DigestError> {
        if size < 0 {
            return Err(DigestError::NegativeSize {
                hash: Quoted::new(hash),
                size,
            });
        }
        Ok(Digest {
            hash: parse_hash(hash)?,
            size: size as u64,
        })
    }

    /// Parses the `{hash}/{size}` pair of a resource name.
    pub fn parse_parts(hash: &str, size: &str) -> Result<Self, DigestError> {
        let hash_bytes = parse_hash(hash)?;
        // Only plain decimal digits: no sign, no spaces, no leading '+'.
        if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
            if let Some(rest) = size.strip_prefix('-')
                && !rest.is_empty()
                && rest.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(DigestError::NegativeSize {
                    hash: Quoted::new(hash),
                    size: rest.parse::<i64>().map(|v| -v).unwrap_or(i64::MIN),
                });
            }
            return Err(DigestError::BadSize {
                hash: Quoted::new(hash),
                size: Quoted::new(size),
            });
        }
        let size: u64 = size.parse().map_err(|_| DigestError::BadSize {
            hash: Quoted::new(hash),
            size: Quoted::new(size),
        })?;
        Ok(Digest {
            hash: hash_bytes,
            size,
        })
    }

    /// Validates a proto digest.
    pub fn from_proto(d: &reapi::Digest) -> Result<Self, DigestError> {
        Self::parse(&d.hash, d.size_bytes)
    }

    /// Validates an optional proto digest field, which must be set.
    pub fn from_required(d: Option<&reapi::Digest>) -> Result<Self, DigestError> {
        Self::from_proto(d.ok_or(DigestError::Missing)?)
    }

    pub fn to_proto(&self) -> reapi::Digest {
        reapi::Digest {
            hash: self.hex(),
            size_bytes: self.size as i64,
        }
    }

    /// Hashes a buffer.
    pub fn of_bytes(data: &[u8]) -> Self {
        Digest {
            hash: Sha256::digest(data).into(),
            size: data.len() as u64,
        }
    }

    /// Hashes a protobuf message as it is encoded on the wire.
    pub fn of_message(msg: &impl prost::Message) -> Self {
        Self::of_bytes(&msg.encode_to_vec())
    }

    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0 && self.hash == EMPTY_HASH
    }

    /// The hash as 64 lowercase hex characters.
    pub fn hex(&self) -> String {
        // A table, not `hex::encode` (a char iterator): FindMissingBlobs
        // answers with thousands of these.
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = Vec::with_capacity(64);
        for b in self.hash {
            out.push(DIGITS[usize::from(b >> 4)]);
            out.push(DIGITS[usize::from(b & 15)]);
        }
        String::from_utf8(out).expect("hex digits are ASCII")
    }
}

fn parse_hash(hash: &str) -> Result<[u8; 32], DigestError> {
    if hash.len() != 64 {
        return Err(DigestError::Length {
            hash: Quoted::new(hash),
            len: hash.chars().count(),
        });
    }
    // Lower-case hex digits only, decoded in the same pass.
    let nibble = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(hash.as_bytes().chunks_exact(2)) {
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(hi), Some(lo)) => *o = hi << 4 | lo,
            _ => {
                return Err(DigestError::NotHex {
                    hash: Quoted::new(hash),
                });
            }
        }
    }
    Ok(out)
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hex(), self.size)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn empty_digest_matches_sha256_of_nothing() {
        assert_eq!(Digest::of_bytes(b""), Digest::EMPTY);
        assert!(Digest::EMPTY.is_empty());
    }

    #[test]
    fn parses_valid_digest() {
        let d = Digest::parse(HELLO, 5).unwrap();
        assert_eq!(d, Digest::of_bytes(b"hello"));
        assert_eq!(d.to_string(), format!("{HELLO}/5"));
    }

    #[test]
    fn refuses_malformed_digests() {
        assert!(matches!(
            Digest::parse("../../etc/passwd", 1),
            Err(DigestError::Length { .. })
        ));
        assert!(matches!(
            Digest::parse(&HELLO.to_uppercase(), 5),
            Err(DigestError::NotHex { .. })
        ));
        let mut slashy = HELLO.to_owned();
        slashy.replace_range(0..3, "../");
        assert!(matches!(
            Digest::parse(&slashy, 5),
            Err(DigestError::NotHex { .. })
        ));
        assert!(matches!(
            Digest::parse(HELLO, -1),
            Err(DigestError::NegativeSize { .. })
        ));
        assert!(matches!(
            Digest::from_required(None),
            Err(DigestError::Missing)
        ));
    }

    #[test]
    fn parses_resource_name_parts_strictly() {
        assert_eq!(
            Digest::parse_parts(HELLO, "5").unwrap(),
            Digest::of_bytes(b"hello")
        );
        assert!(matches!(
            Digest::parse_parts(HELLO, "-5"),
            Err(DigestError::NegativeSize { size: -5, .. })
        ));
        for bad in ["", "+5", " 5", "5x", "99999999999999999999999"] {
            assert!(
                matches!(
                    Digest::parse_parts(HELLO, bad),
                    Err(DigestError::BadSize { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
