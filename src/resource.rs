//! ByteStream resource names and instance names.
//!
//! Read:  `{instance}/blobs/{hash}/{size}`
//! Write: `{instance}/uploads/{uuid}/blobs/{hash}/{size}{/optional-metadata}`
//!
//! and the `compressed-blobs/{compressor}/{hash}/{size}` forms of both. The
//! instance name may contain `/` but none of the reserved segments, so the
//! first reserved segment ends it.

use crate::digest::{Digest, DigestError};
use crate::quote::Quoted;

/// Path segments that may not appear in an instance name.
pub const RESERVED_SEGMENTS: &[&str] = &[
    "blobs",
    "uploads",
    "actions",
    "actionResults",
    "operations",
    "capabilities",
    "compressed-blobs",
];

/// A parsed resource name for ByteStream.Read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResource {
    pub instance: String,
    pub digest: Digest,
}

/// A parsed resource name for ByteStream.Write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteResource {
    pub instance: String,
    pub uuid: String,
    pub digest: Digest,
}

/// Why a resource name was refused. Each message names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("resource name is empty")]
    Empty,
    #[error("resource name {name:?}: expected {expected}")]
    Shape {
        name: Quoted,
        expected: &'static str,
    },
    #[error("resource name {name:?}: {source}")]
    Digest { name: Quoted, source: DigestError },
    #[error("resource name {name:?}: upload id {uuid:?} is not a UUID")]
    Uuid { name: Quoted, uuid: Quoted },
    #[error(
        "resource name {name:?}: compressor {compressor:?} is not supported; this server advertises no compressors"
    )]
    Compressor { name: Quoted, compressor: Quoted },
    #[error("resource name {name:?}: instance name {instance:?}: {why}")]
    Instance {
        name: Quoted,
        instance: Quoted,
        why: String,
    },
}

const READ_SHAPE: &str = "{instance}/blobs/{hash}/{size}";
const WRITE_SHAPE: &str = "{instance}/uploads/{uuid}/blobs/{hash}/{size}[/metadata]";

/// Checks that an instance name can be written in a resource name.
pub fn check_instance_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Ok(());
    }
    for segment in name.split('/') {
        if segment.is_empty() {
            return Err("has an empty path segment".into());
        }
        if RESERVED_SEGMENTS.contains(&segment) {
            return Err(format!(
                "contains the reserved segment {}",
                Quoted::new(segment)
            ));
        }
        if segment == "." || segment == ".." {
            return Err(format!("contains the segment {}", Quoted::new(segment)));
        }
    }
    Ok(())
}

/// Splits `name` at the first reserved segment: (instance, the rest).
fn split_instance<'a>(
    name: &'a str,
    expected: &'static str,
) -> Result<(&'a str, Vec<&'a str>), ResourceError> {
    if name.is_empty() {
        return Err(ResourceError::Empty);
    }
    let segments: Vec<&str> = name.split('/').collect();
    let first = segments
        .iter()
        .position(|s| RESERVED_SEGMENTS.contains(s))
        .ok_or_else(|| ResourceError::Shape {
            name: Quoted::new(name),
            expected,
        })?;
    let instance_len = segments[..first].iter().map(|s| s.len() + 1).sum::<usize>();
    let instance = &name[..instance_len.saturating_sub(1)];
    check_instance_name(instance).map_err(|why| ResourceError::Instance {
        name: Quoted::new(name),
        instance: Quoted::new(instance),
        why,
    })?;
    Ok((instance, segments[first..].to_vec()))
}

/// Parses `blobs/{hash}/{size}` or `compressed-blobs/{c}/{hash}/{size}` at
/// the start of `rest`, returning the digest and what follows.
fn parse_blob<'a>(
    name: &str,
    rest: &[&'a str],
    expected: &'static str,
) -> Result<(Digest, Vec<&'a str>), ResourceError> {
    let shape = || ResourceError::Shape {
        name: Quoted::new(name),
        expected,
    };
    let (hash, size, tail) = match rest {
        ["blobs", hash, size, tail @ ..] => (*hash, *size, tail),
        ["compressed-blobs", compressor, _, _, ..] => {
            return Err(ResourceError::Compressor {
                name: Quoted::new(name),
                compressor: Quoted::new(compressor),
            });
        }
        _ => return Err(shape()),
    };
    let digest = Digest::parse_parts(hash, size).map_err(|source| ResourceError::Digest {
        name: Quoted::new(name),
        source,
    })?;
    Ok((digest, tail.to_vec()))
}

impl ReadResource {
    pub fn parse(name: &str) -> Result<Self, ResourceError> {
        let (instance, rest) = split_instance(name, READ_SHAPE)?;
        let (digest, tail) = parse_blob(name, &rest, READ_SHAPE)?;
        if !tail.is_empty() {
            return Err(ResourceError::Shape {
                name: Quoted::new(name),
                expected: READ_SHAPE,
            });
        }
        Ok(ReadResource {
            instance: instance.to_owned(),
            digest,
        })
    }
}

impl WriteResource {
    pub fn parse(name: &str) -> Result<Self, ResourceError> {
        let (instance, rest) = split_instance(name, WRITE_SHAPE)?;
        let ["uploads", uuid, blob @ ..] = rest.as_slice() else {
            return Err(ResourceError::Shape {
                name: Quoted::new(name),
                expected: WRITE_SHAPE,
            });
        };
        if uuid::Uuid::try_parse(uuid).is_err() {
            return Err(ResourceError::Uuid {
                name: Quoted::new(name),
                uuid: Quoted::new(uuid),
            });
        }
        // Whatever follows the size is optional metadata, which we ignore,
        // but it must not be an empty segment ("…/5/").
        let (digest, tail) = parse_blob(name, blob, WRITE_SHAPE)?;
        if tail.iter().any(|s| s.is_empty()) {
            return Err(ResourceError::Shape {
                name: Quoted::new(name),
                expected: WRITE_SHAPE,
            });
        }
        Ok(WriteResource {
            instance: instance.to_owned(),
            uuid: (*uuid).to_owned(),
            digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    const U: &str = "3f0e5f9a-1c2b-4d5e-8f90-123456789abc";

    #[test]
    fn read_names() {
        let r = ReadResource::parse(&format!("blobs/{H}/5")).unwrap();
        assert_eq!(r.instance, "");
        assert_eq!(r.digest.size(), 5);
        let r = ReadResource::parse(&format!("team/main/blobs/{H}/5")).unwrap();
        assert_eq!(r.instance, "team/main");
    }

    #[test]
    fn write_names() {
        let w = WriteResource::parse(&format!("uploads/{U}/blobs/{H}/5")).unwrap();
        assert_eq!((w.instance.as_str(), w.uuid.as_str()), ("", U));
        let w = WriteResource::parse(&format!("x/uploads/{U}/blobs/{H}/5/some/meta")).unwrap();
        assert_eq!(w.instance, "x");
    }

    #[test]
    fn malformed_names_are_refused_with_reasons() {
        let cases = [
            (String::new(), "empty"),
            (format!("blobs/{H}"), "expected"),
            (format!("blobs/{H}/5/extra"), "expected"),
            (format!("blobs/{H}/-5"), "negative"),
            (format!("blobs/{H}/five"), "decimal"),
            ("blobs/../../etc/passwd/5".to_owned(), "64 lowercase hex"),
            (format!("a//b/blobs/{H}/5"), "empty path segment"),
            (format!("compressed-blobs/zstd/{H}/5"), "not supported"),
            (format!("files/{H}/5"), "expected"),
        ];
        for (name, needle) in cases {
            let err = ReadResource::parse(&name).unwrap_err().to_string();
            assert!(err.contains(needle), "{name:?}: {err}");
        }
        let wcases = [
            (format!("uploads/not-a-uuid/blobs/{H}/5"), "not a UUID"),
            (format!("uploads/{U}/blobs/{H}/5/"), "expected"),
            (format!("blobs/{H}/5"), "expected"),
            (format!("uploads/{U}/blob/{H}/5"), "expected"),
        ];
        for (name, needle) in wcases {
            let err = WriteResource::parse(&name).unwrap_err().to_string();
            assert!(err.contains(needle), "{name:?}: {err}");
        }
    }

    #[test]
    fn a_huge_name_is_quoted_cut() {
        let name = format!("{}/blobs/{H}/5/extra", "x".repeat(1 << 20));
        let err = ReadResource::parse(&name).unwrap_err().to_string();
        assert!(err.len() < 1000, "{} bytes", err.len());
        let err = ReadResource::parse(&format!("blobs/{}/5", "a".repeat(1 << 20)))
            .unwrap_err()
            .to_string();
        assert!(err.len() < 1000, "{} bytes", err.len());
    }

    #[test]
    fn instance_name_rules() {
        assert!(check_instance_name("").is_ok());
        assert!(check_instance_name("a/b").is_ok());
        assert!(check_instance_name("a/blobs").is_err());
        assert!(check_instance_name("a/").is_err());
        assert!(check_instance_name("..").is_err());
    }
}
