//! Loading an action: its Action and Command from the store, checked, and
//! the facts about them that the rest of the pipeline asks for.

use prost::Message;

use super::error::Error;
use super::inputs;
use crate::cas::Store;
use crate::digest::Digest;
use crate::proto::reapi;
use crate::sandbox;

/// An Action and its Command, decoded, with the digests the Action names.
pub struct Loaded {
    pub action: reapi::Action,
    pub command: reapi::Command,
    pub command_digest: Digest,
    pub input_root: Digest,
}

/// [`load`] on the caller's thread when the Action and Command can be read
/// without disk I/O (see `Store::read_cached`); `None` otherwise, and on any
/// error, which the full `load` then reports (or repairs from the upstream).
pub fn load_cached(store: &Store, digest: &Digest) -> Option<Loaded> {
    let action = reapi::Action::decode(store.read_cached(digest)?.ok()??.as_slice()).ok()?;
    let command = Digest::from_required(action.command_digest.as_ref()).ok()?;
    if command.size() > inputs::MAX_MESSAGE_SIZE {
        return None;
    }
    // Both are in the page cache now: the full check reads them again.
    store.read_cached(&command)?.ok()??;
    load(store, digest).ok()
}

/// Loads and decodes the Action and its Command. Missing blobs are listed
/// together so the client re-uploads them in one go.
pub fn load(store: &Store, digest: &Digest) -> Result<Loaded, Error> {
    decode(digest, |d| Ok(store.read(d)?), |d| Ok(store.contains(d)?))
}

/// [`load`] with the reads (`None`: absent) and the presence check given.
fn decode(
    digest: &Digest,
    read: impl Fn(&Digest) -> Result<Option<Vec<u8>>, Error>,
    contains: impl Fn(&Digest) -> Result<bool, Error>,
) -> Result<Loaded, Error> {
    let too_big = |what, kind, digest: &Digest| Error::BadMessage {
        what,
        kind,
        digest: *digest,
        reason: format!(
            "{} bytes, over the limit of {} bytes",
            digest.size(),
            inputs::MAX_MESSAGE_SIZE
        ),
    };
    if digest.size() > inputs::MAX_MESSAGE_SIZE {
        return Err(too_big("action", "Action", digest));
    }
    let Some(bytes) = read(digest)? else {
        return Err(Error::Missing(vec![*digest]));
    };
    let action = reapi::Action::decode(bytes.as_slice()).map_err(|e| Error::BadMessage {
        what: "action",
        kind: "Action",
        digest: *digest,
        reason: e.to_string(),
    })?;
    let bad = |field: &str, e: crate::digest::DigestError| Error::BadMessage {
        what: "action",
        kind: "Action",
        digest: *digest,
        reason: format!("{field}: {e}"),
    };
    let command_digest = Digest::from_required(action.command_digest.as_ref())
        .map_err(|e| bad("command_digest", e))?;
    let input_root = Digest::from_required(action.input_root_digest.as_ref())
        .map_err(|e| bad("input_root_digest", e))?;
    if command_digest.size() > inputs::MAX_MESSAGE_SIZE {
        return Err(too_big("command", "Command", &command_digest));
    }
    let Some(bytes) = read(&command_digest)? else {
        let mut missing = vec![command_digest];
        if !contains(&input_root)? {
            missing.push(input_root);
        }
        return Err(Error::Missing(missing));
    };
    let command = reapi::Command::decode(bytes.as_slice()).map_err(|e| Error::BadMessage {
        what: "command",
        kind: "Command",
        digest: command_digest,
        reason: e.to_string(),
    })?;
    super::command::check(&command).map_err(|reason| Error::BadMessage {
        what: "command",
        kind: "Command",
        digest: command_digest,
        reason,
    })?;
    if let Some(platform) = &action.platform {
        super::command::check_platform(platform).map_err(|reason| Error::BadMessage {
            what: "action",
            kind: "Action",
            digest: *digest,
            reason,
        })?;
    }
    Ok(Loaded {
        action,
        command,
        command_digest,
        input_root,
    })
}

/// The action's platform. REAPI 2.2 moved it to the Action; older clients
/// put it in the Command.
pub fn platform_of<'a>(
    action: &'a reapi::Action,
    command: &'a reapi::Command,
) -> Option<&'a reapi::Platform> {
    #[allow(deprecated)]
    action.platform.as_ref().or(command.platform.as_ref())
}

/// The input root can become `/` only if its top-level `dev`, `proc`
/// and `tmp` are directories or absent (the sandbox mounts on them).
pub fn input_root_fits(tree: &inputs::InputTree) -> Result<(), Error> {
    let files = tree.files().iter().map(|f| (&f.path, "a file"));
    let links = tree.symlinks().iter().map(|l| (&l.path, "a symlink"));
    for (path, kind) in files.chain(links) {
        if let Some(reason) = sandbox::mount_point_conflict(path, kind) {
            return Err(Error::InvalidInput {
                path: path.clone(),
                reason,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, std::sync::Arc<Store>) {
        let tmp = tempfile::tempdir().unwrap();
        let store = crate::cas::tests::test_store(tmp.path(), 1 << 30);
        (tmp, store)
    }

    #[test]
    fn missing_command_and_input_root_are_listed_together() {
        let (_tmp, store) = store();
        let command = Digest::of_bytes(b"no such command");
        let root = Digest::of_bytes(b"no such root");
        let action = reapi::Action {
            command_digest: Some(command.to_proto()),
            input_root_digest: Some(root.to_proto()),
            ..Default::default()
        };
        let bytes = action.encode_to_vec();
        let digest = Digest::of_bytes(&bytes);
        store.put(&digest, &bytes).unwrap();
        match load(&store, &digest) {
            Err(Error::Missing(m)) => assert_eq!(m, vec![command, root]),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn an_oversized_action_is_refused_from_its_digest() {
        let (_tmp, store) = store();
        let digest = Digest::parse(&"0".repeat(64), inputs::MAX_MESSAGE_SIZE as i64 + 1).unwrap();
        assert!(matches!(
            load(&store, &digest),
            Err(Error::BadMessage { kind: "Action", .. })
        ));
    }

    #[test]
    fn the_platform_of_the_action_wins_over_the_commands() {
        let p = |v: &str| reapi::Platform {
            properties: vec![reapi::platform::Property {
                name: "k".into(),
                value: v.into(),
            }],
        };
        #[allow(deprecated)]
        let command = reapi::Command {
            platform: Some(p("command")),
            ..Default::default()
        };
        let action = reapi::Action {
            platform: Some(p("action")),
            ..Default::default()
        };
        assert_eq!(
            platform_of(&action, &command).unwrap().properties[0].value,
            "action"
        );
        assert_eq!(
            platform_of(&reapi::Action::default(), &command)
                .unwrap()
                .properties[0]
                .value,
            "command"
        );
    }
}
