//! Unit tests of the store as a whole.

use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;

pub(crate) fn test_store(dir: &Path, max_size: u64) -> Arc<Store> {
    Store::open(StoreConfig {
        root: dir.to_owned(),
        max_size,
        high_watermark: 90,
        low_watermark: 50,
        fsync: false,
        per_user_max_size: 0,
    })
    .unwrap()
}

#[test]
fn concurrent_writers_of_a_new_shard_all_succeed() {
    // Each round's blobs share one shard that does not exist yet, and
    // every thread writes all of them at once: the first renames into
    // the shard race with its creation.
    let tmp = tempfile::tempdir().unwrap();
    let store = test_store(tmp.path(), 1 << 30);
    let mut rounds = 0;
    for seed in 0u64.. {
        let first = Digest::of_bytes(format!("blob {seed}").as_bytes());
        let shard = store.blob_path(&first).parent().unwrap().to_owned();
        if shard.exists() {
            continue;
        }
        rounds += 1;
        // There are 256 shards.
        if rounds > 200 {
            break;
        }
        let data = format!("blob {seed}").into_bytes();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| store.put(&first, &data).unwrap());
            }
        });
        assert_eq!(store.read(&first).unwrap().unwrap(), data);
    }
}

#[test]
fn put_then_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path(), 1 << 30);
    let d = Digest::of_bytes(b"hello");
    assert!(!store.contains(&d).unwrap());
    store.put(&d, b"hello").unwrap();
    assert!(store.contains(&d).unwrap());
    assert_eq!(store.read(&d).unwrap().unwrap(), b"hello");
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(store.blob_path(&d))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o444);
    assert_eq!(store.usage().0, 4096);
    // A second put of the same blob is not counted twice.
    store.put(&d, b"hello").unwrap();
    assert_eq!(store.usage().0, 4096);
}

#[test]
fn wrong_data_is_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path(), 1 << 30);
    let d = Digest::of_bytes(b"hello");
    assert!(matches!(
        store.put(&d, b"jello"),
        Err(Error::HashMismatch { .. })
    ));
    assert!(matches!(
        store.put(&d, b"hell"),
        Err(Error::SizeMismatch { .. })
    ));
    assert!(!store.contains(&d).unwrap());
    assert!(!store.blob_path(&d).exists());
    assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
}

#[test]
fn empty_blob_is_always_present() {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path(), 1 << 30);
    assert!(store.contains(&Digest::EMPTY).unwrap());
    assert_eq!(store.read(&Digest::EMPTY).unwrap().unwrap(), b"");
    assert!(store.find_missing(&[Digest::EMPTY]).unwrap().is_empty());
}

#[test]
fn truncated_blob_counts_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path(), 1 << 30);
    let d = Digest::of_bytes(b"hello world");
    store.put(&d, b"hello world").unwrap();
    let path = store.blob_path(&d);
    fs::remove_file(&path).unwrap();
    fs::write(&path, b"hello").unwrap();
    assert!(!store.contains(&d).unwrap());
    // Not removed on a read: the asked size could be the wrong one.
    assert!(path.exists());
    // The next write of the blob replaces the damaged file.
    store.put(&d, b"hello world").unwrap();
    assert!(store.contains(&d).unwrap());
    assert_eq!(store.read(&d).unwrap().unwrap(), b"hello world");
}

#[test]
fn a_wrong_size_never_removes_a_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path(), 1 << 30);
    let data = b"#!/bin/sh\nexit 0\n";
    let d = Digest::of_bytes(data);
    store.put(&d, data).unwrap();
    let exe = store.executable_path(&d).unwrap().unwrap();
    let wrong = Digest::new(*d.hash(), d.size() + 1);
    assert!(!store.contains(&wrong).unwrap());
    assert!(store.open_blob(&wrong).unwrap().is_none());
    assert!(store.read(&wrong).unwrap().is_none());
    assert_eq!(store.find_missing(&[wrong]).unwrap(), [wrong]);
    assert!(store.executable_path(&wrong).unwrap().is_none());
    assert!(store.link_source(&wrong, true).unwrap().is_none());
    assert!(store.link_source(&wrong, false).unwrap().is_none());
    assert_eq!(store.read(&d).unwrap().unwrap(), data);
    assert!(exe.exists());
    assert_eq!(store.usage().0, 2 * 4096);
}

#[test]
fn leftover_temporary_files_are_cleared_at_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(test_store(dir.path(), 1 << 30));
    fs::write(dir.path().join("tmp/partial"), b"half a blob").unwrap();
    let store = test_store(dir.path(), 1 << 30);
    assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn executable_copy_is_made_once_counted_and_evictable() {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path(), 1 << 30);
    let data = b"#!/bin/sh\necho hi\n";
    let d = Digest::of_bytes(data);
    assert!(store.executable_path(&d).unwrap().is_none());
    store.put(&d, data).unwrap();
    let x = store.executable_path(&d).unwrap().unwrap();
    assert_eq!(x, dir.path().join("xcas").join(&d.hex()[..2]).join(d.hex()));
    assert_eq!(fs::read(&x).unwrap(), data);
    assert_eq!(mode_of(&x), 0o555);
    assert_eq!(mode_of(&store.blob_path(&d)), 0o444);
    assert_eq!(store.usage().0, 2 * 4096);
    let ino = fs::metadata(&x).unwrap().ino();
    assert_eq!(store.link_source(&d, true).unwrap().unwrap(), x);
    assert_eq!(fs::metadata(&x).unwrap().ino(), ino, "made twice");
    assert_eq!(store.usage().0, 2 * 4096);
    assert_eq!(
        store.link_source(&d, false).unwrap().unwrap(),
        store.blob_path(&d)
    );
    assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);

    // Pinned: both files survive eviction to zero.
    let pin = store.pin([d]);
    let report = store.collect_garbage(0).unwrap();
    assert_eq!((report.files, report.removed_files), (2, 0));
    drop(pin);
    let report = store.collect_garbage(0).unwrap();
    assert_eq!(report.removed_files, 2);
    assert!(!x.exists());
    assert_eq!(store.usage().0, 0);
}

#[test]
fn empty_blob_files_are_made_on_demand_and_never_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path(), 1 << 30);
    let plain = store.link_source(&Digest::EMPTY, false).unwrap().unwrap();
    let exec = store.link_source(&Digest::EMPTY, true).unwrap().unwrap();
    assert_eq!(plain, store.blob_path(&Digest::EMPTY));
    assert_ne!(plain, exec);
    assert_eq!(fs::metadata(&plain).unwrap().len(), 0);
    assert_eq!((mode_of(&plain), mode_of(&exec)), (0o444, 0o555));
    assert_eq!(
        store.executable_path(&Digest::EMPTY).unwrap().unwrap(),
        exec
    );
    let report = store.collect_garbage(0).unwrap();
    assert_eq!((report.files, report.removed_files), (0, 0));
    assert!(plain.exists() && exec.exists());
    assert_eq!(store.usage().0, 0);
}

#[test]
fn a_batch_stores_what_checks_out_and_says_why_the_rest_did_not() {
    for indexed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), 1 << 30);
        if indexed {
            store.start_background().unwrap();
            let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while !store.index.is_ready() {
                assert!(std::time::Instant::now() < until);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        let present = b"already here".to_vec();
        store.put(&Digest::of_bytes(&present), &present).unwrap();
        let datas: Vec<Vec<u8>> = (0..300)
            .map(|i| format!("batch {i}").into_bytes())
            .collect();
        let mut blobs: Vec<(Digest, &[u8])> = datas
            .iter()
            .map(|d| (Digest::of_bytes(d), d.as_slice()))
            .collect();
        blobs.push((Digest::of_bytes(&present), &present));
        // Twice in one batch.
        blobs.push((Digest::of_bytes(&datas[0]), &datas[0]));
        blobs.push((Digest::of_bytes(b"other"), b"wrong"));
        blobs.push((Digest::EMPTY, b""));
        let results = store.put_batch(None, &blobs);
        assert_eq!(results.len(), blobs.len());
        for (i, r) in results.iter().enumerate() {
            if i == 302 {
                assert!(matches!(r, Err(Error::HashMismatch { .. })), "{r:?}");
            } else {
                assert!(r.is_ok(), "blob {i}: {r:?}");
            }
        }
        let asked: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
        assert_eq!(store.find_missing(&asked).unwrap(), [asked[302]]);
        for (d, data) in &blobs[..300] {
            assert_eq!(store.read(d).unwrap().unwrap(), *data);
            assert_eq!(mode_of(&store.blob_path(d)), 0o444);
            assert_eq!(
                fs::metadata(store.blob_path(d))
                    .unwrap()
                    .modified()
                    .unwrap(),
                last_use::fixed_mtime()
            );
        }
        assert_eq!(store.usage().0, 301 * 4096);
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
        if indexed {
            assert_eq!(store.index.len(), 301);
        }
    }
}
