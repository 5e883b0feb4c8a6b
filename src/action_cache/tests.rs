//! Tests of `action_cache`.

use super::*;
use crate::cas::tests::test_store;

const P: Partition = Partition {
    root: RootMode::Host,
};

fn result_with_output(store: &Arc<Store>, data: &[u8]) -> reapi::ActionResult {
    let d = Digest::of_bytes(data);
    store.put(&d, data).unwrap();
    reapi::ActionResult {
        output_files: vec![reapi::OutputFile {
            path: "out.txt".into(),
            digest: Some(d.to_proto()),
            ..Default::default()
        }],
        exit_code: 0,
        ..Default::default()
    }
}

#[test]
fn private_entries_are_seen_only_by_their_owner() {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path(), 1 << 30);
    let ac = ActionCache::new(store.clone(), 1 << 20);
    let action = Digest::of_bytes(b"action");
    let r = result_with_output(&store, b"output");
    ac.put(P, &action, r.clone(), Scope::Private(1000)).unwrap();
    let none = Inline::default();
    assert!(ac.get(P, &action, Some(1000), &none).unwrap().is_some());
    assert!(ac.get(P, &action, Some(1001), &none).unwrap().is_none());
    assert!(ac.get(P, &action, None, &none).unwrap().is_none());
    ac.put(P, &action, r, Scope::Shared).unwrap();
    assert!(ac.get(P, &action, Some(1001), &none).unwrap().is_some());
    assert!(ac.get(P, &action, None, &none).unwrap().is_some());
}

#[test]
fn partitions_never_see_each_others_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path(), 1 << 30);
    let ac = ActionCache::new(store.clone(), 1 << 20);
    let action = Digest::of_bytes(b"action");
    let input = Partition::of(RootMode::Input);
    let none = Inline::default();
    let host_result = result_with_output(&store, b"host");
    ac.put(P, &action, host_result.clone(), Scope::Shared)
        .unwrap();
    assert!(ac.get(input, &action, None, &none).unwrap().is_none());
    assert!(ac.get(input, &action, Some(7), &none).unwrap().is_none());
    let input_result = result_with_output(&store, b"input");
    ac.put(input, &action, input_result.clone(), Scope::Private(7))
        .unwrap();
    assert!(ac.get(input, &action, Some(8), &none).unwrap().is_none());
    assert_eq!(
        ac.get(input, &action, Some(7), &none).unwrap(),
        Some(input_result)
    );
    assert_eq!(
        ac.get(P, &action, Some(7), &none).unwrap(),
        Some(host_result)
    );
    assert!(P.is_default() && !input.is_default());
    // The default partition's layout is the one stores already have.
    assert!(dir.path().join("ac/shared").is_dir());
    assert!(dir.path().join("ac/input-root/user-7").is_dir());
}

#[test]
fn entry_with_evicted_output_is_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path(), 1 << 30);
    let ac = ActionCache::new(store.clone(), 1 << 20);
    let action = Digest::of_bytes(b"action");
    ac.put(
        P,
        &action,
        result_with_output(&store, b"output"),
        Scope::Shared,
    )
    .unwrap();
    fs::remove_file(store.blob_path(&Digest::of_bytes(b"output"))).unwrap();
    assert!(
        ac.get(P, &action, None, &Inline::default())
            .unwrap()
            .is_none()
    );
}

#[test]
fn inline_contents_are_stored_and_returned_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path(), 1 << 30);
    let ac = ActionCache::new(store.clone(), 8);
    let action = Digest::of_bytes(b"action");
    let r = reapi::ActionResult {
        stdout_raw: b"out!".to_vec().into(),
        stderr_raw: b"this is too long to inline".to_vec().into(),
        ..Default::default()
    };
    let stored = ac.put(P, &action, r, Scope::Shared).unwrap();
    assert!(stored.stdout_raw.is_empty());
    assert_eq!(
        stored.stdout_digest,
        Some(Digest::of_bytes(b"out!").to_proto())
    );
    let got = ac
        .get(
            P,
            &action,
            None,
            &Inline {
                stdout: true,
                stderr: true,
                files: &[],
            },
        )
        .unwrap()
        .unwrap();
    assert_eq!(&got.stdout_raw[..], b"out!");
    assert!(got.stderr_raw.is_empty(), "over the inline cap");
}

#[test]
fn torn_entries_are_misses_and_verify_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path(), 1 << 30);
    let ac = ActionCache::new(store.clone(), 1 << 20);
    let none = Inline::default();
    let mut actions = Vec::new();
    for i in 0..4u8 {
        let a = Digest::of_bytes(&[i]);
        ac.put(
            Partition::default(),
            &a,
            result_with_output(&store, b"output"),
            Scope::Shared,
        )
        .unwrap();
        actions.push(a);
    }
    let path = |a: &Digest| ac.entry_path(Partition::default(), Scope::Shared, a);
    let whole = fs::read(path(&actions[0])).unwrap();
    // Empty (power loss before the data), truncated, garbage.
    for (a, bytes) in [
        (&actions[0], vec![]),
        (&actions[1], whole[..whole.len() - 3].to_vec()),
        (&actions[2], vec![0x55; 300]),
    ] {
        fs::remove_file(path(a)).unwrap();
        fs::write(path(a), bytes).unwrap();
    }
    assert!(
        ac.get(Partition::default(), &actions[0], None, &none)
            .unwrap()
            .is_none()
    );
    assert!(!path(&actions[0]).exists(), "a torn entry is removed");
    let (checked, removed) = ac.verify().unwrap();
    assert_eq!(checked, 3);
    assert_eq!(removed.len(), 2);
    assert!(
        ac.get(Partition::default(), &actions[3], None, &none)
            .unwrap()
            .is_some()
    );
    // A plain message without the frame (as entries were written
    // before) is refused too.
    let plain = result_with_output(&store, b"output").encode_to_vec();
    assert!(unframe(&plain).is_err());
}

#[test]
fn inline_contents_that_do_not_match_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path(), 1 << 30);
    let ac = ActionCache::new(store.clone(), 1 << 20);
    let r = reapi::ActionResult {
        stdout_raw: b"out!".to_vec().into(),
        stdout_digest: Some(Digest::of_bytes(b"other").to_proto()),
        ..Default::default()
    };
    let err = ac
        .put(P, &Digest::of_bytes(b"a"), r, Scope::Shared)
        .unwrap_err();
    assert!(matches!(err, Error::BadInline { .. }), "{err}");
}
