//! Eviction and verify, on a store in a temporary directory.

use super::super::tests::test_store;
use crate::digest::Digest;
use std::cell::RefCell;

thread_local! {
    /// Run once between a pass over the users over their share and
    /// the next survey: what a concurrent upload does.
    static AFTER_SHARE_PASS: RefCell<Option<Box<dyn FnOnce()>>> = RefCell::new(None);
}

pub(super) fn after_share_pass() {
    if let Some(f) = AFTER_SHARE_PASS.with(|h| h.borrow_mut().take()) {
        f();
    }
}

#[test]
fn evicts_least_recently_used_first_and_keeps_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path(), 1 << 30);
    let blobs: Vec<(Digest, Vec<u8>)> = (0..10u8)
        .map(|i| {
            let data = vec![i; 5000];
            (Digest::of_bytes(&data), data)
        })
        .collect();
    // blob 0 is the oldest, blob 9 the newest (last use is the ctime,
    // which only the clock sets).
    for (d, data) in &blobs {
        store.put(d, data).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(3));
    }
    let _pin = store.pin([blobs[0].0]);
    // Each blob costs 8 KiB on disk; keep 4 of them.
    let report = store.collect_garbage(4 * 8192).unwrap();
    assert_eq!(report.bytes_before, 10 * 8192);
    // The pinned blob stays, and the target is still reached: the
    // oldest unpinned blobs go in its place.
    assert_eq!(report.removed_files, 6, "{report:?}");
    assert!(
        store.contains(&blobs[0].0).unwrap(),
        "pinned blob was evicted"
    );
    for (d, _) in &blobs[1..7] {
        assert!(!store.contains(d).unwrap());
    }
    for (d, _) in &blobs[7..] {
        assert!(store.contains(d).unwrap());
    }
    assert_eq!(store.usage().0, 4 * 8192);
}

#[test]
fn blobs_written_in_the_same_instant_are_evicted_only_as_needed() {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path(), 1 << 30);
    for i in 0..10u8 {
        let data = vec![i; 100];
        let d = Digest::of_bytes(&data);
        store.put(&d, &data).unwrap();
    }
    let report = store.collect_garbage(6 * 4096).unwrap();
    assert_eq!(report.removed_files, 4, "{report:?}");
    assert_eq!(store.usage().0, 6 * 4096);
}

#[test]
fn verify_removes_only_corrupt_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path(), 1 << 30);
    let good = Digest::of_bytes(b"good");
    let bad = Digest::of_bytes(b"will rot");
    store.put(&good, b"good").unwrap();
    store.put(&bad, b"will rot").unwrap();
    let path = store.blob_path(&bad);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"rotten!!").unwrap();
    let report = store.verify().unwrap();
    assert_eq!(report.checked, 2);
    assert_eq!(report.removed, vec![path.clone()]);
    assert!(!path.exists());
    assert!(store.contains(&good).unwrap());
}

#[test]
fn users_over_their_share_lose_their_blobs_first() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: charging blobs to users needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = share_store(dir.path(), 4 * 8192);
    let blob = |i: u32| {
        let data = vec![i as u8; 5000];
        (Digest::of_bytes(&data), data)
    };
    // The victim's two blobs are the oldest; the flooder's ten follow.
    let victim: Vec<_> = (0..2).map(blob).collect();
    for (d, data) in &victim {
        store.put_as(Some(4001), d, data).unwrap();
    }
    let flood: Vec<_> = (10..20).map(blob).collect();
    for (d, data) in &flood {
        store.put_as(Some(4002), d, data).unwrap();
    }
    // A blob both use is shared, charged to neither.
    let (shared, data) = blob(30);
    store.put_as(Some(4002), &shared, &data).unwrap();
    assert!(store.contains_as(&shared, Some(4001)).unwrap());
    let report = store.collect_garbage(8 * 8192).unwrap();
    assert_eq!(report.removed_files, 5, "{report:?}");
    for (d, _) in &victim {
        assert!(store.contains(d).unwrap(), "the victim's blob was evicted");
    }
    assert!(store.contains(&shared).unwrap());
    assert_eq!(
        flood
            .iter()
            .filter(|(d, _)| store.contains(d).unwrap())
            .count(),
        5
    );
    assert_eq!(
        store.usage_by_user(),
        vec![(4001, 2 * 8192), (4002, 5 * 8192)]
    );
}

/// The race behind `security::a_flooder_evicts_their_own_blobs_first`
/// failing now and then: the flooder's uploads that land while their
/// blobs are being evicted put the store over the target again, and
/// the least-recently-used pass then took the victim's older blobs.
#[test]
fn a_flood_during_eviction_still_costs_only_the_flooder() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: charging blobs to users needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = share_store(dir.path(), 4 * 8192);
    let blob = |i: u32| {
        let data = vec![i as u8; 5000];
        (Digest::of_bytes(&data), data)
    };
    let victim: Vec<_> = (0..2).map(blob).collect();
    for (d, data) in &victim {
        store.put_as(Some(4001), d, data).unwrap();
    }
    for (d, data) in (10..20).map(blob) {
        store.put_as(Some(4002), &d, &data).unwrap();
    }
    // 12 blobs, 8 kept: the first pass takes 4 of the flooder's, who
    // then uploads 2 more before the next survey.
    let flooder = std::sync::Arc::clone(&store);
    AFTER_SHARE_PASS.with(|h| {
        *h.borrow_mut() = Some(Box::new(move || {
            for (d, data) in (20..22).map(blob) {
                flooder.put_as(Some(4002), &d, &data).unwrap();
            }
        }))
    });
    let report = store.collect_garbage(8 * 8192).unwrap();
    assert!(
        AFTER_SHARE_PASS.with(|h| h.borrow().is_none()),
        "no share pass"
    );
    for (d, _) in &victim {
        assert!(
            store.contains(d).unwrap(),
            "the victim's blob was evicted: {report:?}"
        );
    }
    assert_eq!(report.removed_files, 6, "{report:?}");
    assert_eq!(
        store.usage_by_user(),
        vec![(4001, 2 * 8192), (4002, 6 * 8192)]
    );
}

fn share_store(root: &std::path::Path, share: u64) -> std::sync::Arc<super::super::Store> {
    super::super::Store::open(super::super::StoreConfig {
        root: root.to_owned(),
        max_size: 1 << 30,
        high_watermark: 90,
        low_watermark: 50,
        fsync: false,
        per_user_max_size: share,
    })
    .unwrap()
}

#[test]
fn nothing_is_removed_under_target() {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path(), 1 << 30);
    store.put(&Digest::of_bytes(b"x"), b"x").unwrap();
    let report = store.collect_garbage(1 << 20).unwrap();
    assert_eq!((report.files, report.removed_files), (1, 0));
}
