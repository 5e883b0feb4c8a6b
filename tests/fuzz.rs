//! Bounded fuzzing of the parsers that see untrusted bytes, as ordinary
//! tests on stable Rust: each target starts from a few valid inputs and
//! tries a fixed number of mutations of them (bit flips, interesting
//! bytes, insertions, deletions, duplicated and spliced ranges,
//! truncations) drawn from a fixed seed, so every run tries the same
//! inputs. A panic is a failing test that prints the input in hex.
//! `FUZZ_ITERATIONS` raises the count for a longer local run.

use std::io::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use nativelink_lre::authority::RewriteAuthority;
use nativelink_lre::cas::{Store, StoreConfig};
use nativelink_lre::config::Config;
use nativelink_lre::digest::Digest;
use nativelink_lre::execution::inputs;
use nativelink_lre::proto::reapi;
use nativelink_lre::resource::{ReadResource, WriteResource};

const SEED: u64 = 0x6e6c_7265_6675_7a7a;

fn iterations(default: usize) -> usize {
    std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mutate(rng: &mut StdRng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    const INTERESTING: &[u8] = b"\x00\x01\x7f\x80\xff/.:%-0123456789abcdef\n\"[]=";
    for _ in 0..rng.random_range(1..=4) {
        let len = input.len();
        match rng.random_range(0..7) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] = INTERESTING[rng.random_range(0..INTERESTING.len())];
            }
            2 => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..=8);
                for _ in 0..n {
                    input.insert(i, rng.random());
                }
            }
            3 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 16));
                input.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 64));
                let piece = input[a..b].to_vec();
                let at = rng.random_range(0..=len);
                input.splice(at..at, piece);
            }
            5 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                if !other.is_empty() {
                    let a = rng.random_range(0..other.len());
                    let at = rng.random_range(0..=len);
                    input.splice(at..at, other[a..].iter().copied());
                }
            }
            _ if len > 0 => input.truncate(rng.random_range(0..len)),
            _ => {}
        }
    }
}

/// Runs `target` on every seed and on `count` mutations of them.
fn fuzz(name: &str, seeds: &[Vec<u8>], count: usize, mut target: impl FnMut(&[u8])) {
    let mut rng = StdRng::seed_from_u64(SEED ^ name.len() as u64);
    let count = iterations(count);
    let mut tried = 0;
    for i in 0..seeds.len() + count {
        let mut input = seeds[i % seeds.len()].clone();
        if i >= seeds.len() {
            mutate(&mut rng, seeds, &mut input);
        }
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            panic!("{name}: crash on input {}", hex::encode(&input));
        }
        tried += 1;
    }
    let _ = writeln!(std::io::stderr(), "{name}: {tried} inputs tried");
}

const H: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

#[test]
fn fuzz_resource_names_and_digests() {
    let seeds: Vec<Vec<u8>> = [
        format!("blobs/{H}/5"),
        format!("team/main/blobs/{H}/5"),
        format!("uploads/3f0e5f9a-1c2b-4d5e-8f90-123456789abc/blobs/{H}/5/meta"),
        format!("x/compressed-blobs/zstd/{H}/18446744073709551615"),
    ]
    .map(String::into_bytes)
    .to_vec();
    fuzz("resource names", &seeds, 40_000, |input| {
        let s = String::from_utf8_lossy(input);
        if let Ok(r) = ReadResource::parse(&s) {
            // A parsed name always names a store path safely.
            assert_eq!(r.digest.hex().len(), 64);
            assert!(!r.instance.split('/').any(|p| p == ".."));
        }
        let _ = WriteResource::parse(&s);
        if let Some((hash, size)) = s.rsplit_once('/') {
            if let Ok(d) = Digest::parse_parts(hash, size) {
                assert_eq!(d.hex(), hash);
            }
            if let Err(e) = Digest::parse(hash, size.len() as i64 - 3) {
                assert!(e.to_string().len() < 1000);
            }
        }
    });
}

/// Feeds `input` to the rewriter in pieces and reads everything out.
fn rewrite(input: &[u8], piece: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut builder = tokio_test_reader(input, piece);
        let mut r = RewriteAuthority::new(&mut builder);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        out
    })
}

/// An in-memory reader that hands out at most `piece` bytes a read.
fn tokio_test_reader(input: &[u8], piece: usize) -> impl tokio::io::AsyncRead + Unpin {
    struct Pieces(Vec<u8>, usize, usize);
    impl tokio::io::AsyncRead for Pieces {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let (start, piece) = (self.1, self.2);
            let end = (start + piece)
                .min(self.0.len())
                .min(start + buf.remaining());
            buf.put_slice(&self.0[start..end]);
            self.1 = end;
            std::task::Poll::Ready(Ok(()))
        }
    }
    Pieces(input.to_vec(), 0, piece.max(1))
}

#[test]
fn fuzz_authority_rewriter() {
    let mut seed = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    seed.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS
    let path = b"%2Frun%2Fnativelink-lre%2Fsocket";
    let mut block = vec![0x82, 0x41, path.len() as u8];
    block.extend_from_slice(path);
    seed.extend(&(block.len() as u32).to_be_bytes()[1..]);
    seed.extend([1, 4, 0, 0, 0, 1]);
    seed.extend(&block);
    seed.extend([0, 0, 3, 0, 1, 0, 0, 0, 1, b'a', b'b', b'c']);
    fuzz("authority rewriter", &[seed], 20_000, |input| {
        let out = rewrite(input, 1 + input.len() % 7);
        // Never longer than what came in: the rewrite only shortens.
        assert!(
            out.len() <= input.len() + 16,
            "{} -> {}",
            input.len(),
            out.len()
        );
    });
}

#[test]
fn fuzz_proc_net_tcp_parser() {
    let seed = b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:C350 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C40 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0000000000000000FFFF00000100007F:9C40 0000000000000000FFFF00000100007F:C350 01 0:0 00:0 0  1234 0 5 1 0 20 4 30 10 -1
".to_vec();
    let a = "127.0.0.1:40000".parse().unwrap();
    let b = "127.0.0.1:50000".parse().unwrap();
    fuzz("/proc/net/tcp parser", &[seed], 40_000, |input| {
        let text = String::from_utf8_lossy(input);
        let _ = nativelink_lre::peer::find_owner(&text, a, b);
        let _ = nativelink_lre::peer::find_owner(&text, b, a);
    });
}

#[test]
fn fuzz_directory_and_command_validation() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig {
        root: dir.path().join("state"),
        max_size: 1 << 30,
        high_watermark: 90,
        low_watermark: 80,
        fsync: false,
        per_user_max_size: 0,
    })
    .unwrap();
    let file = Digest::of_bytes(b"input");
    store.put(&file, b"input").unwrap();
    let leaf = reapi::Directory {
        files: vec![reapi::FileNode {
            name: "a.txt".into(),
            digest: Some(file.to_proto()),
            is_executable: true,
            ..Default::default()
        }],
        symlinks: vec![reapi::SymlinkNode {
            name: "link".into(),
            target: "../x/a.txt".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let leaf_bytes = leaf.encode_to_vec();
    let leaf_digest = Digest::of_bytes(&leaf_bytes);
    store.put(&leaf_digest, &leaf_bytes).unwrap();
    let root = reapi::Directory {
        directories: vec![reapi::DirectoryNode {
            name: "x".into(),
            digest: Some(leaf_digest.to_proto()),
        }],
        ..Default::default()
    };
    // A Directory as the root, and as a child of a fixed root.
    fuzz(
        "Directory validation",
        &[root.encode_to_vec(), leaf_bytes.clone()],
        6_000,
        |input| {
            let d = Digest::of_bytes(input);
            store.put(&d, input).unwrap();
            let _ = inputs::resolve(&store, &d);
        },
    );
    #[allow(deprecated)]
    let command = reapi::Command {
        arguments: vec!["/bin/true".into()],
        working_directory: "x".into(),
        output_paths: vec!["out/a".into(), "b".into()],
        output_files: vec!["c/d".into()],
        output_directories: vec!["e".into()],
        ..Default::default()
    };
    let exec_root = dir.path().join("exec");
    fuzz(
        "Command validation",
        &[command.encode_to_vec()],
        6_000,
        |input| {
            let Ok(cmd) = reapi::Command::decode(input) else {
                return;
            };
            let _ = std::fs::remove_dir_all(&exec_root);
            std::fs::create_dir(&exec_root).unwrap();
            if inputs::create_output_parents(&exec_root, &cmd.working_directory, &cmd, None).is_ok()
            {
                // Nothing was made outside the exec root.
                assert!(std::fs::read_dir(dir.path()).unwrap().count() <= 2);
            }
        },
    );
}

#[test]
fn fuzz_config_loader() {
    let seeds: Vec<Vec<u8>> = [
        "state-dir = \"/var/lib/x\"\ninstance-names = [\"\", \"a/b\"]\nidle-timeout = \"10m\"\n\
         [store]\nmax-size = \"3GiB\"\nhigh-watermark = 90\nlow-watermark = 80\n\
         [limits]\nmax-connections-per-user = 8\nstream-idle-timeout = \"2s\"\n",
        "[listen]\ntcp = [\"127.0.0.1:50051\"]\nunix-mode = \"0660\"\n[execution]\nplatform = { OSFamily = \"linux\", pool = [\"a\"] }\n",
        "[upstream]\nendpoint = \"grpcs://cache:443\"\nheaders = { \"x-a\" = \"b\" }\nretry-min = \"1s\"\n[cgroup]\ncpu-max = 1.5\n",
    ]
    .map(|s| s.as_bytes().to_vec())
    .to_vec();
    fuzz("config loader", &seeds, 20_000, |input| {
        let text = String::from_utf8_lossy(input);
        if let Err(e) = Config::parse(&text, Path::new("fuzz.toml")) {
            assert!(e.to_string().starts_with("fuzz.toml"), "{e}");
        }
    });
}
