//! Determinism checks: run a cached action again in the sandbox, without
//! storing the result, and compare the new run's exit code, standard
//! output and every output with the cached entry (as nix's `--check`).
//! The entry is never replaced: a check only reports.
//!
//! `nativelink-lre check` asks for this over the Admin service (trusted
//! callers only), and `[execution] repeat = N` makes the daemon check one
//! in N of the results its own sandbox stored, in the background, at the
//! daemon's share of the queue. Mismatches are counted in `status` and
//! logged with both digests; the new run's outputs are in the store (and
//! leased, as the cached ones) so that both can be read and compared.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use prost::Message;

use super::executor::{Error, Executor, Local};
use super::run::Run;
use crate::digest::Digest;
use crate::proto::nativelink_lre::v1::{ActionCheck, CheckRequest, OutputDifference};
use crate::proto::reapi;
use crate::trust::Caller;

/// The actions a request names: its digests, every action with a shared
/// entry (`all`), or `sample` of them at random. An entry whose Action is
/// no longer in the store is listed with size 0, and reported as such.
pub fn chosen(ex: &Executor, req: &CheckRequest) -> Result<Vec<Digest>, String> {
    let mut out = Vec::new();
    for d in &req.action_digests {
        let (hash, size) = d
            .split_once('/')
            .ok_or_else(|| format!("{d:?} is not HASH/SIZE"))?;
        out.push(Digest::parse_parts(hash, size).map_err(|e| format!("{d:?}: {e}"))?);
    }
    if req.all || req.sample > 0 {
        let mut hashes = ex
            .action_cache()
            .shared_hashes()
            .map_err(|e| e.to_string())?;
        if !req.all {
            shuffle(&mut hashes);
            hashes.truncate(req.sample as usize);
            hashes.sort();
        }
        for h in hashes {
            // The Action blob's size is its file's length in the store.
            let size = std::fs::metadata(ex.store().cas_dir().join(&h[..2]).join(&h))
                .map_or(0, |m| m.len());
            out.push(Digest::parse(&h, size as i64).map_err(|e| e.to_string())?);
        }
    }
    Ok(out)
}

/// A Fisher-Yates shuffle seeded from the kernel.
fn shuffle(v: &mut [String]) {
    let mut seed = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed));
    let mut x = u64::from_le_bytes(seed) | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

/// Checks one action for `caller`; counts it (and a mismatch) and logs a
/// mismatch with both digests.
pub async fn check(ex: &Arc<Executor>, caller: &Caller, action: Digest) -> ActionCheck {
    let mut report = ActionCheck {
        action_digest: action.to_string(),
        ..Default::default()
    };
    match compare(ex, caller, action).await {
        Ok(differences) => {
            ex.counters.checks.fetch_add(1, Ordering::Relaxed);
            if differences.is_empty() {
                report.outcome = "same".into();
            } else {
                ex.counters.mismatches.fetch_add(1, Ordering::Relaxed);
                for d in &differences {
                    tracing::warn!(%action, path = d.path, cached = d.cached, rerun = d.rerun,
                        "determinism check: the action gave a different result");
                }
                report.outcome = "different".into();
                report.differences = differences;
            }
        }
        Err(e) => {
            tracing::info!(%action, "determinism check not done: {e}");
            report.outcome = "error".into();
            report.error = e;
        }
    }
    report
}

async fn compare(
    ex: &Arc<Executor>,
    caller: &Caller,
    action: Digest,
) -> Result<Vec<OutputDifference>, String> {
    let cached = {
        let ac = Arc::clone(ex.action_cache());
        tokio::task::spawn_blocking(move || ac.shared_entry(&action))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
            .ok_or("no shared action cache entry (or its outputs are gone)")?
    };
    let loaded = ex.load(action).await.map_err(|e| e.to_string())?;
    if loaded.action.do_not_cache {
        return Err("the action is do_not_cache".into());
    }
    let timeout = ex.timeout(&loaded.action).map_err(|e| e.to_string())?;
    // The entries checked are the default partition's: the host mode,
    // unless the action asks for another.
    let root = super::platform::root_mode(
        super::action::platform_of(&loaded.action, &loaded.command),
        crate::sandbox::RootMode::Host,
    )
    .map_err(|e| format!("it cannot run here: {e}"))?;
    let placement = ex
        .placement(&loaded.action, &loaded.command, root)
        .map_err(|e| format!("it cannot run here: {e}"))?;
    let tree = ex
        .resolve(loaded.input_root)
        .await
        .map_err(|e: Error| e.to_string())?;
    let needed: Vec<Digest> = tree
        .digests()
        .into_iter()
        .chain([action, loaded.command_digest, loaded.input_root])
        .collect();
    let _pins = ex.store().pin(needed);
    let run = Run::new(action, caller.uid, false);
    let (rerun, timed_out) = ex
        .run_here(Local {
            run: &run,
            caller,
            action_digest: action,
            command: &loaded.command,
            tree,
            placement,
            timeout,
            queued_at: SystemTime::now(),
            warnings: &[],
        })
        .await
        .map_err(|e| e.to_string())?;
    if timed_out {
        return Err(format!(
            "the new run ran longer than its timeout of {timeout:?}"
        ));
    }
    let store = Arc::clone(ex.store());
    tokio::task::spawn_blocking(move || {
        let new = outputs_of(&store, &rerun)?;
        store.lease(new.values().filter_map(|o| o.digest));
        let old = outputs_of(&store, &cached)?;
        Ok(differences(&old, &new))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// One output, as compared: its blob (a file or stdout) or its value (an
/// exit code or a symlink's target).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Output {
    digest: Option<Digest>,
    shown: String,
}

impl Output {
    fn blob(d: Digest, executable: bool) -> Output {
        Output {
            digest: Some(d),
            shown: if executable {
                format!("{d} (executable)")
            } else {
                d.to_string()
            },
        }
    }

    fn value(v: String) -> Output {
        Output {
            digest: None,
            shown: v,
        }
    }
}

/// Everything a result says an action produced, by path: the exit code,
/// stdout, each output file and symlink, and each file and symlink of each
/// output directory (read from its Tree) at its full path.
fn outputs_of(
    store: &crate::cas::Store,
    r: &reapi::ActionResult,
) -> Result<BTreeMap<String, Output>, String> {
    let digest = |d: &Option<reapi::Digest>, what: &str| {
        Digest::from_required(d.as_ref()).map_err(|e| format!("{what}: {e}"))
    };
    let mut out = BTreeMap::new();
    out.insert(
        "(exit code)".to_owned(),
        Output::value(r.exit_code.to_string()),
    );
    out.insert(
        "(stdout)".to_owned(),
        Output::blob(digest(&r.stdout_digest, "stdout")?, false),
    );
    for f in &r.output_files {
        out.insert(
            f.path.clone(),
            Output::blob(digest(&f.digest, &f.path)?, f.is_executable),
        );
    }
    #[allow(deprecated)]
    for s in r
        .output_symlinks
        .iter()
        .chain(&r.output_file_symlinks)
        .chain(&r.output_directory_symlinks)
    {
        out.insert(s.path.clone(), Output::value(format!("-> {}", s.target)));
    }
    for d in &r.output_directories {
        let t = digest(&d.tree_digest, &d.path)?;
        let bytes = store
            .read(&t)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the tree of {} ({t}) is gone", d.path))?;
        let tree = reapi::Tree::decode(bytes.as_slice()).map_err(|e| format!("tree {t}: {e}"))?;
        tree_outputs(&tree, &d.path, &mut out)?;
    }
    Ok(out)
}

/// The files and symlinks of `tree`, at `prefix/…`.
fn tree_outputs(
    tree: &reapi::Tree,
    prefix: &str,
    out: &mut BTreeMap<String, Output>,
) -> Result<(), String> {
    let children: BTreeMap<Digest, &reapi::Directory> = tree
        .children
        .iter()
        .map(|c| (Digest::of_message(c), c))
        .collect();
    let Some(root) = &tree.root else {
        return Err(format!("the tree of {prefix} has no root"));
    };
    // (directory, its path); a Tree is finite, and each level is visited
    // once per path, as the client would lay it out.
    let mut stack = vec![(root, prefix.to_owned())];
    while let Some((dir, path)) = stack.pop() {
        let at = |name: &str| {
            if path.is_empty() {
                name.to_owned()
            } else {
                format!("{path}/{name}")
            }
        };
        for f in &dir.files {
            let d = Digest::from_required(f.digest.as_ref()).map_err(|e| e.to_string())?;
            out.insert(at(&f.name), Output::blob(d, f.is_executable));
        }
        for s in &dir.symlinks {
            out.insert(at(&s.name), Output::value(format!("-> {}", s.target)));
        }
        for sub in &dir.directories {
            let d = Digest::from_required(sub.digest.as_ref()).map_err(|e| e.to_string())?;
            let child = children
                .get(&d)
                .ok_or_else(|| format!("the tree of {prefix} lacks directory {d}"))?;
            out.insert(at(&sub.name), Output::value("(directory)".into()));
            stack.push((child, at(&sub.name)));
        }
    }
    Ok(())
}

/// The paths whose outputs differ between two results, in path order.
fn differences(
    old: &BTreeMap<String, Output>,
    new: &BTreeMap<String, Output>,
) -> Vec<OutputDifference> {
    let shown = |o: Option<&Output>| o.map(|o| o.shown.clone()).unwrap_or_default();
    let mut paths: Vec<&String> = old.keys().chain(new.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter(|p| old.get(*p) != new.get(*p))
        .map(|p| OutputDifference {
            path: p.clone(),
            cached: shown(old.get(p)),
            rerun: shown(new.get(p)),
        })
        .collect()
}

/// The caller a background check runs as: the daemon itself, in the
/// anonymous share of the queue.
pub fn daemon_caller() -> Caller {
    Caller {
        uid: None,
        name: Some("nativelink-lre (execution.repeat)".into()),
        trusted: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_each_path_with_both_values() {
        let d1 = Digest::of_bytes(b"one");
        let d2 = Digest::of_bytes(b"two");
        let mut old = BTreeMap::new();
        old.insert("(exit code)".to_owned(), Output::value("0".into()));
        old.insert("a".to_owned(), Output::blob(d1, false));
        old.insert("gone".to_owned(), Output::blob(d1, false));
        let mut new = old.clone();
        new.insert("a".to_owned(), Output::blob(d2, false));
        new.remove("gone");
        new.insert("x".to_owned(), Output::blob(d1, true));
        let diff = differences(&old, &new);
        let got: Vec<(&str, &str, &str)> = diff
            .iter()
            .map(|d| (d.path.as_str(), d.cached.as_str(), d.rerun.as_str()))
            .collect();
        let (s1, s2) = (d1.to_string(), d2.to_string());
        let x = format!("{d1} (executable)");
        assert_eq!(
            got,
            vec![
                ("a", s1.as_str(), s2.as_str()),
                ("gone", s1.as_str(), ""),
                ("x", "", x.as_str())
            ]
        );
        assert!(differences(&old, &old).is_empty());
    }

    #[test]
    fn output_directories_are_compared_file_by_file() {
        let leaf = reapi::Directory {
            files: vec![reapi::FileNode {
                name: "f".into(),
                digest: Some(Digest::of_bytes(b"f").to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let tree = reapi::Tree {
            root: Some(reapi::Directory {
                directories: vec![reapi::DirectoryNode {
                    name: "sub".into(),
                    digest: Some(Digest::of_message(&leaf).to_proto()),
                }],
                ..Default::default()
            }),
            children: vec![leaf],
        };
        let mut out = BTreeMap::new();
        tree_outputs(&tree, "out", &mut out).unwrap();
        assert_eq!(out.keys().collect::<Vec<_>>(), ["out/sub", "out/sub/f"]);
    }
}
