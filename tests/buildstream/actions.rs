//! What BuildStream's actions need, checked with a plain REAPI client
//! against the real daemon (as root): the lexicon's `OSFamily=linux`, the
//! input root as `/` selected by instance name or by `lre-root`, and the
//! action cache kept apart between the two root modes.

use crate::common::exec::*;
use crate::common::*;
use reapi::action_cache_client::ActionCacheClient;
use reapi::execution_client::ExecutionClient;
use tonic::Code;
use tonic::transport::Channel;

use super::static_busybox;

/// A daemon whose instance "bst" runs actions with the input root as `/`.
fn daemon() -> Daemon {
    Daemon::start("\n[instances.bst]\nroot = \"input\"\n")
}

/// A script run by `/bin/sh` with a static busybox sysroot as inputs:
/// `bin/busybox` and `bin/<applet>` links to it. It also runs in the host
/// mode, where `/bin/sh` is the host's.
fn in_sysroot(script: &str) -> ActionSpec {
    let mut spec = ActionSpec::sh(script).exe("bin/busybox", &static_busybox());
    for applet in [
        "sh", "cat", "echo", "mkdir", "ls", "id", "hostname", "grep", "cut", "test", "[", "pwd",
        "sort", "tr",
    ] {
        spec.symlinks
            .push((format!("bin/{applet}"), "busybox".into()));
    }
    spec
}

async fn execute_in(ch: &Channel, instance: &str, action: &Digest) -> reapi::ExecuteResponse {
    let mut stream = ExecutionClient::new(ch.clone())
        .execute(reapi::ExecuteRequest {
            instance_name: instance.into(),
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(op) = stream.message().await.unwrap() {
        last = Some(op);
    }
    response_of(&last.expect("Execute streamed nothing"))
}

async fn lookup_in(
    ch: &Channel,
    instance: &str,
    action: &Digest,
) -> Result<reapi::ActionResult, tonic::Status> {
    ActionCacheClient::new(ch.clone())
        .get_action_result(reapi::GetActionResultRequest {
            instance_name: instance.into(),
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

fn ok(r: &reapi::ExecuteResponse) -> bool {
    r.status.as_ref().is_none_or(|s| s.code == 0)
        && r.result.as_ref().is_some_and(|x| x.exit_code == 0)
}

async fn blob_text(ch: &Channel, d: &Option<reapi::Digest>) -> String {
    String::from_utf8_lossy(&read_blob(ch, d.as_ref().unwrap()).await).into_owned()
}

async fn tree_of(ch: &Channel, r: &reapi::ExecuteResponse, path: &str) -> reapi::Tree {
    let result = r.result.as_ref().unwrap();
    let dir = result
        .output_directories
        .iter()
        .find(|d| d.path == path)
        .unwrap_or_else(|| panic!("no output directory {path}: {result:?}"));
    <reapi::Tree as prost::Message>::decode(
        read_blob(ch, dir.tree_digest.as_ref().unwrap())
            .await
            .as_slice(),
    )
    .unwrap()
}

/// The file `name` of a Tree's root, read.
async fn tree_file(ch: &Channel, tree: &reapi::Tree, name: &str) -> String {
    let root = tree.root.as_ref().unwrap();
    let f = root
        .files
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no {name} in {root:?}"));
    blob_text(ch, &f.digest).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lexicons_platform_runs_by_default_and_errors_show_plain_values() {
    let d = Daemon::start("");
    let ch = d.unix().await;
    let mut lexicon = ActionSpec::sh("true");
    lexicon.platform = vec![
        ("ISA".into(), "x86-64".into()),
        ("OSFamily".into(), "linux".into()),
    ];
    let r = run(&ch, &lexicon, false).await;
    assert!(ok(&r), "{:?}", r.status);
    let mut capitalised = ActionSpec::sh("true").salt("Linux");
    capitalised.platform = vec![("OSFamily".into(), "Linux".into())];
    assert!(ok(&run(&ch, &capitalised, false).await));

    let mut other = ActionSpec::sh("true");
    other.platform = vec![("OSFamily".into(), "macos".into())];
    let s = run(&ch, &other, false).await.status.unwrap();
    assert_eq!(s.code, Code::FailedPrecondition as i32);
    assert_eq!(
        s.message,
        "platform property OSFamily=macos is not satisfiable here: \
         this worker offers OSFamily=linux or OSFamily=Linux"
    );
    let mut unknown = ActionSpec::sh("true");
    unknown.platform = vec![("container-image".into(), "docker://x".into())];
    let s = run(&ch, &unknown, false).await.status.unwrap();
    assert!(
        s.message
            .contains("offers no container-image; it offers ISA, OSFamily"),
        "{}",
        s.message
    );
    let m = &s.message;
    assert!(
        !m.contains("One(") && !m.contains("Many(") && !m.contains('['),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_input_root_is_slash_and_nothing_of_the_host_is_visible() {
    let d = daemon();
    let ch = d.unix().await;
    // The shape BuildStream uses: a working directory below the root and
    // output paths that climb out of it, absolute paths in the command.
    let mut spec = in_sysroot(
        "set -e
         for p in /usr /etc /exec /nix /lib /lib64 /var /home /root; do
           if test -e $p; then echo \"$p is visible\" >&2; exit 1; fi
         done
         mkdir -p /buildstream-install
         echo made > /made-at-root
         echo private > /tmp/x
         cut -d' ' -f4,5 /proc/self/mountinfo | sort -k2 > /buildstream-install/mounts
         grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\\t' > /buildstream-install/status
         id -u > /buildstream-install/uid
         hostname > /buildstream-install/hostname
         pwd > /buildstream-install/pwd
         ls /dev > /buildstream-install/dev",
    );
    spec.working_dir = "buildstream/project/element".into();
    spec.files.push((
        "buildstream/project/element/src".into(),
        b"x".to_vec(),
        false,
    ));
    spec.output_paths = vec![
        "../../../buildstream-install".into(),
        "../../../made-at-root".into(),
    ];
    let action = prepare(&ch, &spec).await;
    let r = execute_in(&ch, "bst", &action).await;
    assert!(
        ok(&r),
        "{:?} {}",
        r.status,
        blob_text(&ch, &r.result.as_ref().unwrap().stderr_digest).await
    );
    assert_eq!(
        output_file(&ch, &r, "../../../made-at-root").await,
        b"made\n"
    );
    let tree = tree_of(&ch, &r, "../../../buildstream-install").await;
    let mounts = tree_file(&ch, &tree, "mounts").await;
    // Besides /, /dev, /proc and /tmp, only the action's own input files,
    // each bound read-only onto itself (source path = mount point).
    let inputs = ["/bin/busybox", "/buildstream/project/element/src"];
    for line in mounts.lines() {
        let (source, point) = line.split_once(' ').unwrap();
        assert!(
            point == "/"
                || ["/dev", "/proc", "/tmp"]
                    .iter()
                    .any(|t| point.starts_with(t))
                || (inputs.contains(&point) && source == point),
            "a host mount is visible: {line}\n{mounts}"
        );
    }
    let points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, p)| p))
        .collect();
    assert!(
        points.contains(&"/tmp") && points.contains(&"/proc"),
        "{mounts}"
    );
    // Everything else about the sandbox is as in the host mode.
    assert_eq!(
        tree_file(&ch, &tree, "status").await,
        "CapEff:0000000000000000\nCapBnd:0000000000000000\nNoNewPrivs:1\nSeccomp:2\n"
    );
    assert_eq!(tree_file(&ch, &tree, "uid").await, "65534\n");
    assert_eq!(tree_file(&ch, &tree, "hostname").await, "localhost\n");
    assert_eq!(
        tree_file(&ch, &tree, "pwd").await,
        "/buildstream/project/element\n"
    );
    let dev = tree_file(&ch, &tree, "dev").await;
    for node in ["null", "zero", "urandom", "pts", "shm"] {
        assert!(dev.lines().any(|l| l == node), "{node} missing: {dev}");
    }

    // The mount points made for the run are gone afterwards: the whole
    // input root, collected as an output, has no dev, proc or tmp.
    let mut whole = in_sysroot("echo x > /made");
    whole.working_dir = "w".into();
    whole.files.push(("w/keep".into(), b"k".to_vec(), false));
    whole.output_paths = vec!["..".into()];
    let action = prepare(&ch, &whole).await;
    let r = execute_in(&ch, "bst", &action).await;
    assert!(ok(&r), "{:?}", r.status);
    let root = tree_of(&ch, &r, "..").await.root.unwrap();
    let names: Vec<&str> = root
        .directories
        .iter()
        .map(|d| d.name.as_str())
        .chain(root.files.iter().map(|f| f.name.as_str()))
        .collect();
    assert_eq!(names, ["bin", "w", "made"], "{root:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_per_user_daemon_runs_the_input_root_mode_too() {
    // A throwaway uid with no passwd entry owns the daemon; its actions run
    // as that uid, with copied inputs.
    const OWNER: u32 = 4671;
    let d = crate::per_user::Lre::start(crate::per_user::Start {
        extra: "\n[instances.bst]\nroot = \"input\"\n".into(),
        uid: Some(OWNER),
        ..Default::default()
    });
    let ch = d.unix_as(OWNER).await;
    let mut spec = in_sysroot(
        "set -e
         for p in /usr /etc /exec /lib /lib64; do
           if test -e $p; then echo \"$p is visible\" >&2; exit 1; fi
         done
         echo made > /made; id -u; pwd",
    );
    spec.working_dir = "w".into();
    spec.files.push(("w/keep".into(), b"k".to_vec(), false));
    spec.output_paths = vec!["..".into()];
    let action = prepare(&ch, &spec).await;
    let r = execute_in(&ch, "bst", &action).await;
    assert!(
        ok(&r),
        "{:?} {}\n{}",
        r.status,
        blob_text(&ch, &r.result.as_ref().unwrap().stderr_digest).await,
        d.log()
    );
    assert_eq!(stdout_of(&ch, &r).await, "65534\n/w\n");
    let root = tree_of(&ch, &r, "..").await.root.unwrap();
    let names: Vec<&str> = root
        .directories
        .iter()
        .map(|d| d.name.as_str())
        .chain(root.files.iter().map(|f| f.name.as_str()))
        .collect();
    assert_eq!(names, ["bin", "w", "made"], "{root:?}");
    assert!(
        d.log()
            .contains("sandbox protections (root mode input): all in force"),
        "{}",
        d.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_instance_or_lre_root_selects_the_mode_and_the_caches_stay_apart() {
    let d = daemon();
    let ch = d.unix().await;
    let script = "if test -e /usr; then echo host; else echo input; fi; pwd";
    let mut spec = in_sysroot(script);
    spec.working_dir = "w".into();
    spec.files.push(("w/f".into(), b"f".to_vec(), false));
    let action = prepare(&ch, &spec).await;

    // One Action, two instances: each runs it in its own mode, and the
    // result cached through one never answers the other.
    let host = execute_in(&ch, "", &action).await;
    assert!(ok(&host) && !host.cached_result, "{:?}", host.status);
    assert_eq!(stdout_of(&ch, &host).await, "host\n/exec/w\n");
    assert!(lookup_in(&ch, "", &action).await.is_ok());
    let miss = lookup_in(&ch, "bst", &action).await.unwrap_err();
    assert_eq!(miss.code(), Code::NotFound);
    let input = execute_in(&ch, "bst", &action).await;
    assert!(ok(&input) && !input.cached_result, "{:?}", input.status);
    assert_eq!(stdout_of(&ch, &input).await, "input\n/w\n");
    for (instance, expected) in [("", "host\n/exec/w\n"), ("bst", "input\n/w\n")] {
        let again = execute_in(&ch, instance, &action).await;
        assert!(again.cached_result, "{instance:?}");
        assert_eq!(stdout_of(&ch, &again).await, expected, "{instance:?}");
        let hit = lookup_in(&ch, instance, &action).await.unwrap();
        assert_eq!(
            blob_text(&ch, &hit.stdout_digest).await,
            expected,
            "{instance:?}"
        );
    }

    // lre-root overrides the instance, in both directions.
    for (instance, mode, expected) in [
        ("", "input", "input\n/w\n"),
        ("bst", "host", "host\n/exec/w\n"),
    ] {
        let mut s = spec.clone();
        s.platform = vec![("lre-root".into(), mode.into())];
        let a = prepare(&ch, &s).await;
        let r = execute_in(&ch, instance, &a).await;
        assert!(ok(&r), "{instance:?} {mode}: {:?}", r.status);
        assert_eq!(stdout_of(&ch, &r).await, expected, "{instance:?} {mode}");
    }

    // An upload through one instance is not seen through the other,
    // whoever makes it: root's goes to the shared view of its partition,
    // another user's to its private view there.
    let uploaded = Digest::of_bytes(b"an action uploaded through bst");
    ActionCacheClient::new(ch.clone())
        .update_action_result(reapi::UpdateActionResultRequest {
            instance_name: "bst".into(),
            action_digest: Some(uploaded.to_proto()),
            action_result: Some(reapi::ActionResult::default()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(lookup_in(&ch, "bst", &uploaded).await.is_ok());
    assert_eq!(
        lookup_in(&ch, "", &uploaded).await.unwrap_err().code(),
        Code::NotFound
    );
    let stranger = d.unix_as(4377).await;
    let theirs = Digest::of_bytes(b"a stranger's claim");
    ActionCacheClient::new(stranger.clone())
        .update_action_result(reapi::UpdateActionResultRequest {
            instance_name: "".into(),
            action_digest: Some(theirs.to_proto()),
            action_result: Some(reapi::ActionResult::default()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(lookup_in(&stranger, "", &theirs).await.is_ok());
    for (who, instance) in [(&stranger, "bst"), (&ch, ""), (&ch, "bst")] {
        assert_eq!(
            lookup_in(who, instance, &theirs).await.unwrap_err().code(),
            Code::NotFound,
            "{instance:?}"
        );
    }

    // A name that is not served is refused, with the served names.
    let err = lookup_in(&ch, "other", &action).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("\"\", \"bst\""), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_roots_and_properties_are_refused_before_anything_runs() {
    let d = daemon();
    let ch = d.unix().await;
    // A mount point that is a symlink (it would redirect the mount) or a
    // file: INVALID_ARGUMENT naming the path, nothing cached.
    let mut link = in_sysroot("echo ran");
    link.symlinks.push(("tmp".into(), "bin".into()));
    let mut file = in_sysroot("echo ran");
    file.files.push(("proc".into(), b"x".to_vec(), false));
    for (spec, path) in [(link, "\"tmp\""), (file, "\"proc\"")] {
        let action = prepare(&ch, &spec).await;
        let r = execute_in(&ch, "bst", &action).await;
        let s = r.status.unwrap();
        assert_eq!(s.code, Code::InvalidArgument as i32, "{s:?}");
        assert!(
            s.message.contains(path) && s.message.contains("must be directories or absent"),
            "{}",
            s.message
        );
        assert!(r.result.is_none());
        assert!(lookup_in(&ch, "bst", &action).await.is_err());
        // The host mode has no such mount point on the input root.
        let host = execute_in(&ch, "", &action).await;
        assert!(ok(&host), "{:?}", host.status);
    }

    let mut bad = in_sysroot("true");
    bad.platform = vec![("lre-root".into(), "chroot".into())];
    let s = run(&ch, &bad, false).await.status.unwrap();
    assert_eq!(s.code, Code::FailedPrecondition as i32);
    assert_eq!(
        s.message,
        "platform property lre-root=chroot: the value must be \"host\" or \"input\""
    );
    let mut remote = in_sysroot("true");
    remote.platform = vec![
        ("lre-remote".into(), "true".into()),
        ("lre-root".into(), "input".into()),
    ];
    let s = run(&ch, &remote, false).await.status.unwrap();
    assert_eq!(s.code, Code::FailedPrecondition as i32);
    assert!(s.message.contains("run only here"), "{}", s.message);
    // Through an input-root instance even a host-mode action stays here
    // (an upstream's result would land in the other partition); through
    // the default instance, with no upstream configured, it runs here.
    let mut remote_host = ActionSpec::sh("true");
    remote_host.platform = vec![
        ("lre-remote".into(), "true".into()),
        ("lre-root".into(), "host".into()),
    ];
    let action = prepare(&ch, &remote_host).await;
    let s = execute_in(&ch, "bst", &action).await.status.unwrap();
    assert_eq!(s.code, Code::FailedPrecondition as i32);
    assert!(s.message.contains("run only here"), "{}", s.message);
    assert!(ok(&execute_in(&ch, "", &action).await));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_neither_answers_nor_receives_the_input_root_partition() {
    use crate::common::upstream::{BuildGrid, hs};
    let bg = BuildGrid::start();
    let d = Daemon::start(&format!(
        "\n[upstream]\nendpoint = \"{}\"\ninstance-name = \"upstream\"\nwrite-back = true\n\
         \n[instances.bst]\nroot = \"input\"\n",
        bg.endpoint()
    ));
    let ch = d.unix().await;
    // A result only BuildGrid has: read through for the default instance,
    // never for the input-root one (asked first, so that nothing local
    // could explain the difference).
    let (seeded, _) = bg.seed("upstream", "partition", 0);
    let seeded = crate::common::upstream::digest_of(&seeded);
    assert_eq!(
        lookup_in(&ch, "bst", &seeded).await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(lookup_in(&ch, "", &seeded).await.is_ok());
    assert_eq!(
        lookup_in(&ch, "bst", &seeded).await.unwrap_err().code(),
        Code::NotFound
    );

    // Results made here: the input-root one is not pushed, the default
    // one is (and the queue is in order, so the first would be there by
    // the time the second is).
    let spec = in_sysroot("echo made > out").outputs(&["out"]);
    let input = prepare(&ch, &spec.clone().salt("input")).await;
    assert!(ok(&execute_in(&ch, "bst", &input).await));
    let host = prepare(&ch, &spec.salt("host")).await;
    assert!(ok(&execute_in(&ch, "", &host).await));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while bg.get_action("upstream", &hs(&host)).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the default instance's result never reached BuildGrid"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        bg.get_action("upstream", &hs(&input)).is_none(),
        "an input-root result was pushed to the upstream"
    );
    let st = nativelink_lre::client::status(&ch)
        .await
        .unwrap()
        .upstream
        .unwrap();
    assert_eq!((st.pushes_done, st.pushes_queued), (1, 0), "{st:?}");
}
