//! The index against the store it stands for: every way a blob can go
//! must turn its answer to "missing" at once.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cas::Store;
use crate::cas::tests::test_store;
use crate::digest::Digest;

fn indexed_store(dir: &std::path::Path) -> Arc<Store> {
    let store = test_store(dir, 1 << 30);
    store.start_background().unwrap();
    wait_ready(&store);
    store
}

fn wait_ready(store: &Store) {
    let until = Instant::now() + Duration::from_secs(20);
    while !store.index.is_ready() {
        assert!(Instant::now() < until, "the index was not built");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn blob(i: usize) -> (Digest, Vec<u8>) {
    let data = format!("index test blob {i}").into_bytes();
    (Digest::of_bytes(&data), data)
}

#[test]
fn the_walk_finds_what_was_there_and_new_blobs_join() {
    let dir = tempfile::tempdir().unwrap();
    let before: Vec<_> = (0..50).map(blob).collect();
    {
        let store = test_store(dir.path(), 1 << 30);
        for (d, data) in &before {
            store.put(d, data).unwrap();
        }
    }
    let store = indexed_store(dir.path());
    assert_eq!(store.index.len(), 50);
    let (new, data) = blob(1000);
    store.put(&new, &data).unwrap();
    assert_eq!(store.index.len(), 51);
    let (absent, _) = blob(2000);
    let mut asked: Vec<Digest> = before.iter().map(|(d, _)| *d).collect();
    asked.extend([new, absent, Digest::EMPTY]);
    assert_eq!(store.find_missing(&asked).unwrap(), [absent]);
    // The size is part of the digest: another size is not present.
    let wrong = Digest::new(*new.hash(), new.size() + 1);
    assert_eq!(store.find_missing(&[wrong]).unwrap(), [wrong]);
    assert!(!store.contains(&wrong).unwrap());
}

#[test]
fn a_blob_removed_behind_the_daemons_back_is_missing_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = indexed_store(dir.path());
    let (d, data) = blob(1);
    let (kept, kept_data) = blob(2);
    store.put(&d, &data).unwrap();
    store.put(&kept, &kept_data).unwrap();
    assert!(store.find_missing(&[d, kept]).unwrap().is_empty());
    // An operator's rm, straight before the next question.
    fs::remove_file(store.blob_path(&d)).unwrap();
    assert_eq!(store.find_missing(&[d, kept]).unwrap(), [d]);
    assert!(!store.contains(&d).unwrap());
    // Uploaded again, it is present again.
    store.put(&d, &data).unwrap();
    assert!(store.find_missing(&[d, kept]).unwrap().is_empty());
    assert!(store.index.is_ready());
}

#[test]
fn a_blob_moved_away_or_replaced_or_truncated_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let store = indexed_store(dir.path());
    let blobs: Vec<_> = (0..3).map(blob).collect();
    for (d, data) in &blobs {
        store.put(d, data).unwrap();
    }
    let asked: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    // mv away.
    let moved = dir.path().join("moved");
    fs::rename(store.blob_path(&blobs[0].0), &moved).unwrap();
    // Replaced by a rename over it (same length, other bytes).
    let fake = dir.path().join("fake");
    fs::write(&fake, vec![b'x'; blobs[1].1.len()]).unwrap();
    fs::rename(&fake, store.blob_path(&blobs[1].0)).unwrap();
    // Truncated in place (root may, whatever the mode).
    if nix::unistd::geteuid().is_root() {
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(store.blob_path(&blobs[2].0))
            .unwrap();
        assert_eq!(store.find_missing(&asked).unwrap(), asked);
    } else {
        assert_eq!(store.find_missing(&asked).unwrap(), asked[..2]);
    }
}

#[test]
fn eviction_and_verify_take_blobs_out_of_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = indexed_store(dir.path());
    let blobs: Vec<_> = (0..10).map(blob).collect();
    for (d, data) in &blobs {
        store.put(d, data).unwrap();
    }
    let asked: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    let pin = store.pin([asked[0]]);
    let report = store.collect_garbage(0).unwrap();
    assert_eq!(report.removed_files, 9);
    assert_eq!(store.find_missing(&asked).unwrap(), asked[1..]);
    drop(pin);

    // A blob rotted on disk: verify removes it, the index follows, and the
    // next upload brings it back.
    let (d, data) = blob(100);
    store.put(&d, &data).unwrap();
    let path = store.blob_path(&d);
    let mut rotten = data.clone();
    rotten[0] ^= 1;
    // Written in place through the existing inode (as a disk error would).
    let mut perm = fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
    fs::set_permissions(&path, perm).unwrap();
    fs::write(&path, &rotten).unwrap();
    // Already the write made it missing: present would need a re-check.
    assert_eq!(store.find_missing(&[d]).unwrap(), [d]);
    let report = store.verify().unwrap();
    assert_eq!(report.removed, vec![path]);
    assert_eq!(store.find_missing(&[d]).unwrap(), [d]);
    store.put(&d, &data).unwrap();
    assert!(store.find_missing(&[d]).unwrap().is_empty());
    assert_eq!(store.read(&d).unwrap().unwrap(), data);
}

#[test]
fn a_shard_moved_away_throws_the_index_away_and_it_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let store = indexed_store(dir.path());
    let (d, data) = blob(7);
    store.put(&d, &data).unwrap();
    let shard = store.blob_path(&d).parent().unwrap().to_owned();
    let elsewhere = dir.path().join("shard-elsewhere");
    fs::rename(&shard, &elsewhere).unwrap();
    // The answer is right whether the index is there or not.
    assert_eq!(store.find_missing(&[d]).unwrap(), [d]);
    assert!(!store.contains(&d).unwrap());
    // Put back by hand: the rebuilt index finds it.
    fs::rename(&elsewhere, &shard).unwrap();
    wait_ready(&store);
    assert!(store.find_missing(&[d]).unwrap().is_empty());
}

#[test]
fn the_store_directory_replaced_under_its_path_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let store = indexed_store(dir.path());
    let (d, data) = blob(8);
    store.put(&d, &data).unwrap();
    assert!(store.contains(&d).unwrap());
    // The whole cas/ swapped for an empty one by two renames.
    let cas = dir.path().join("cas");
    fs::rename(&cas, dir.path().join("cas.old")).unwrap();
    fs::create_dir(&cas).unwrap();
    assert_eq!(store.find_missing(&[d]).unwrap(), [d]);
    wait_ready(&store);
    assert_eq!(store.find_missing(&[d]).unwrap(), [d]);
    store.put(&d, &data).unwrap();
    assert!(store.contains(&d).unwrap());
}

#[test]
fn answers_before_the_index_is_ready_come_from_stat() {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path(), 1 << 30);
    let (d, data) = blob(9);
    store.put(&d, &data).unwrap();
    assert!(!store.index.is_ready());
    assert!(store.find_missing(&[d]).unwrap().is_empty());
    fs::remove_file(store.blob_path(&d)).unwrap();
    assert_eq!(store.find_missing(&[d]).unwrap(), [d]);
}

#[test]
fn concurrent_removals_and_questions_never_see_a_gone_blob() {
    // Writers, an eviction-like remover and askers race; whenever an
    // asker is told "present", the file must exist afterwards unless a
    // removal came after the answer, which the remover's own log tells.
    let dir = tempfile::tempdir().unwrap();
    let store = indexed_store(dir.path());
    let blobs: Vec<_> = (0..200).map(blob).collect();
    let removed = std::sync::Mutex::new(std::collections::HashSet::new());
    std::thread::scope(|s| {
        s.spawn(|| {
            for (d, data) in &blobs {
                store.put(d, data).unwrap();
            }
        });
        s.spawn(|| {
            for (d, _) in blobs.iter().step_by(3) {
                // Record first, then remove: "removed" is a superset of
                // what is gone.
                removed.lock().unwrap().insert(*d);
                let _ = fs::remove_file(store.blob_path(d));
            }
        });
        for _ in 0..200 {
            let asked: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
            let missing = store.find_missing(&asked).unwrap();
            let gone = removed.lock().unwrap().clone();
            for d in asked.iter().filter(|d| !missing.contains(d)) {
                // Told present: it was not removed before the answer.
                if !gone.contains(d) {
                    continue;
                }
                // Removed after the question at the earliest, or still
                // there: it must not be both removed long before and
                // claimed now. A second question settles it.
                if !store.blob_path(d).exists() {
                    assert_eq!(store.find_missing(&[*d]).unwrap(), [*d]);
                }
            }
        }
    });
}

#[test]
fn a_store_larger_than_the_index_keeps_answering_by_stat() {
    let dir = tempfile::tempdir().unwrap();
    let store = indexed_store(dir.path());
    store.index.set_max_blobs(10);
    let blobs: Vec<_> = (0..12).map(blob).collect();
    for (d, data) in &blobs {
        store.put(d, data).unwrap();
    }
    // The eleventh blob took it over the limit: thrown away, not rebuilt.
    assert!(!store.index.is_ready());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!store.index.is_ready());
    let asked: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    assert!(store.find_missing(&asked).unwrap().is_empty());
    fs::remove_file(store.blob_path(&asked[3])).unwrap();
    assert_eq!(store.find_missing(&asked).unwrap(), [asked[3]]);
}

#[test]
fn a_batch_blob_removed_right_after_its_rename_is_missing() {
    // A batch records its blobs from their renames' own events, without a
    // stat; a removal racing with the rename must still make it missing.
    let dir = tempfile::tempdir().unwrap();
    let store = indexed_store(dir.path());
    let blobs: Vec<_> = (1000..1600).map(blob).collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            // Every other blob goes as soon as it is there.
            let mut left: Vec<_> = blobs.iter().step_by(2).map(|(d, _)| *d).collect();
            while !left.is_empty() && !done.load(std::sync::atomic::Ordering::Acquire) {
                left.retain(|d| fs::remove_file(store.blob_path(d)).is_err());
            }
        });
        for chunk in blobs.chunks(200) {
            let batch: Vec<(Digest, &[u8])> = chunk
                .iter()
                .map(|(d, data)| (*d, data.as_slice()))
                .collect();
            assert!(store.put_batch(None, &batch).iter().all(|r| r.is_ok()));
        }
        std::thread::sleep(Duration::from_millis(200));
        done.store(true, std::sync::atomic::Ordering::Release);
    });
    assert!(store.index.is_ready());
    let asked: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    let missing = store.find_missing(&asked).unwrap();
    for d in &asked {
        assert_eq!(
            missing.contains(d),
            !store.blob_path(d).exists(),
            "blob {d}: the index disagrees with the directory"
        );
    }
}
