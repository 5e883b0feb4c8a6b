use super::cgroupfs::{parse_procs, remove_tree};
use super::mountinfo::{Cgroup2Mount, unescape_octal};
use super::*;

use std::os::unix::process::ExitStatusExt as _;
use std::process::{Child, Command};
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::thread;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

// ---- Pure parsing -------------------------------------------------

/// A Debian 12 machine without systemd as init: v1 controllers plus the
/// unified hierarchy at /sys/fs/cgroup/unified (these machines).
const HYBRID_MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
23 22 0:5 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
const HYBRID_PROC_CGROUP: &str = "\
9:name=systemd:/
4:memory:/process_api/253da424870a7bc1a637e88ebe88fdf4
1:cpu:/
0::/
";
/// A systemd machine with the unified hierarchy only.
const UNIFIED_MOUNTINFO: &str = "\
26 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
27 26 0:24 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
30 27 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
const UNIFIED_PROC_CGROUP: &str = "0::/system.slice/nativelink-lre.service\n";

#[test]
fn finds_the_unified_mount_of_a_hybrid_system() {
    let mounts = parse_cgroup2_mounts(HYBRID_MOUNTINFO);
    assert_eq!(
        mounts,
        [Cgroup2Mount {
            root: "/".into(),
            mount_point: "/sys/fs/cgroup/unified".into()
        }]
    );
    let own = parse_own_cgroup(HYBRID_PROC_CGROUP).unwrap();
    assert_eq!(own, Path::new("/"));
    assert_eq!(
        resolve_cgroup_dir(&mounts, &own).unwrap(),
        Path::new("/sys/fs/cgroup/unified")
    );
}

#[test]
fn finds_the_service_cgroup_of_a_unified_system() {
    let mounts = parse_cgroup2_mounts(UNIFIED_MOUNTINFO);
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].mount_point, Path::new("/sys/fs/cgroup"));
    let own = parse_own_cgroup(UNIFIED_PROC_CGROUP).unwrap();
    assert_eq!(
        resolve_cgroup_dir(&mounts, &own).unwrap(),
        Path::new("/sys/fs/cgroup/system.slice/nativelink-lre.service")
    );
}

#[test]
fn no_cgroup2_mount_or_entry() {
    let v1_only: String = HYBRID_MOUNTINFO
        .lines()
        .filter(|l| !l.contains("cgroup2"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(parse_cgroup2_mounts(&v1_only).is_empty());
    assert_eq!(parse_own_cgroup("4:memory:/a\n1:cpu:/\n"), None);
    assert_eq!(parse_own_cgroup(""), None);
}

#[test]
fn unescapes_mount_points_and_honours_the_mount_root() {
    // A subtree bind-mounted at a path with a space and a backslash.
    let mountinfo = "50 22 0:26 /user.slice /mnt/my\\040cgroups\\134x rw - cgroup2 cgroup2 rw\n\
                     51 22 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
    let mounts = parse_cgroup2_mounts(mountinfo);
    assert_eq!(mounts[0].root, Path::new("/user.slice"));
    assert_eq!(mounts[0].mount_point, Path::new("/mnt/my cgroups\\x"));
    assert_eq!(
        resolve_cgroup_dir(&mounts, Path::new("/user.slice/user-1000.slice")).unwrap(),
        Path::new("/mnt/my cgroups\\x/user-1000.slice")
    );
    // Not below /user.slice: the second mount shows it. `/user.slice2`
    // must not count as below `/user.slice`.
    assert_eq!(
        resolve_cgroup_dir(&mounts, Path::new("/user.slice2/a")).unwrap(),
        Path::new("/sys/fs/cgroup/user.slice2/a")
    );
    assert_eq!(
        resolve_cgroup_dir(&mounts[..1], Path::new("/system.slice")),
        None
    );
    // A trailing lone backslash or short escape is kept as is.
    assert_eq!(unescape_octal("a\\04"), Path::new("a\\04"));
}

#[test]
fn parses_flat_keyed_files_and_procs() {
    assert_eq!(flat_keyed("populated 1\nfrozen 0\n", "populated"), Some(1));
    assert_eq!(flat_keyed("populated 1\nfrozen 0\n", "frozen"), Some(0));
    assert_eq!(flat_keyed("populated 1\n", "pop"), None);
    assert_eq!(parse_procs("12\n345\n").unwrap(), [12, 345]);
    assert_eq!(parse_procs("").unwrap(), Vec::<i32>::new());
    assert!(parse_procs("12\nx\n").is_err());
}

#[test]
fn validates_names() {
    let base = Path::new("/sys/fs/cgroup/x");
    assert!(validate_name(base, "0123abc-def", ACTION_PREFIX.len()).is_ok());
    for bad in ["", ".", "..", "a/b", "a\nb"] {
        let err = validate_name(base, bad, 0).unwrap_err();
        assert!(err.to_string().contains("/sys/fs/cgroup/x"), "{err}");
    }
    assert!(validate_name(base, &"a".repeat(255), 0).is_ok());
    assert!(validate_name(base, &"a".repeat(250), ACTION_PREFIX.len()).is_err());
}

#[test]
fn lists_missing_controllers() {
    assert_eq!(Controllers::default().missing(), ["memory", "pids", "cpu"]);
    let some = Controllers::from_list("cpuset cpu io memory\n");
    assert_eq!(
        some,
        Controllers {
            memory: true,
            pids: false,
            cpu: true
        }
    );
    assert_eq!(some.missing(), ["pids"]);
    assert_eq!(some.enabled(), ["memory", "cpu"]);
}

#[test]
fn errors_name_the_path() {
    let err = read_file(Path::new("/nonexistent/cgroup.procs")).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/cgroup.procs"),
        "{err}"
    );
    let err = write_file(Path::new("/nonexistent/cgroup.kill"), "1").unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/cgroup.kill"),
        "{err}"
    );
    assert!(!write_optional(Path::new("/nonexistent-dir-file"), "1").unwrap());
}

// ---- Against this machine's cgroup v2 hierarchy --------------------
//
// `setup()` moves the whole test process (every thread, so every other
// test running meanwhile) into base/supervisor. That is harmless as long
// as each test moves it back (`Session` does, even on panic), uses its
// own subtree name, and the tests run one at a time (`REAL`).
//
// They need root and a writable cgroup2 mount; elsewhere they print a
// note and pass.

static REAL: Mutex<()> = Mutex::new(());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn lock() -> std::sync::MutexGuard<'static, ()> {
    REAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether the real tests can run here.
fn real_cgroups() -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let ok = nix::unistd::geteuid().is_root() && !parse_cgroup2_mounts(&mountinfo).is_empty();
    if !ok {
        eprintln!("skipped: needs root and a cgroup2 mount");
    }
    ok
}

fn unique_name() -> String {
    format!(
        "nativelink-lre-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Our cgroup as /proc/self/cgroup shows it.
fn current_cgroup() -> PathBuf {
    parse_own_cgroup(&fs::read_to_string("/proc/self/cgroup").unwrap()).unwrap()
}

/// The directory of our current cgroup.
fn current_cgroup_dir() -> PathBuf {
    let mounts = parse_cgroup2_mounts(&fs::read_to_string("/proc/self/mountinfo").unwrap());
    resolve_cgroup_dir(&mounts, &current_cgroup()).unwrap()
}

fn ready(name: &str) -> Manager {
    match Manager::setup(name).unwrap() {
        Setup::Ready(manager) => manager,
        Setup::Unavailable(why) => panic!("cgroups unavailable: {why}"),
    }
}

/// A manager that is shut down, and whose action cgroups are killed,
/// when the test ends, even by a panic.
struct Session {
    manager: Manager,
    keep_actions: bool,
}

impl Session {
    fn new(name: &str) -> Session {
        Session {
            manager: ready(name),
            keep_actions: false,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.keep_actions {
            remove_leftovers(&self.manager.base);
        }
        self.manager.shutdown();
    }
}

/// Runs `script` in `sh` after the shell joined `cgroup`; waits until it
/// has, so that the caller can count on `pids()`.
fn spawn_in(procs_file: &Path, script: &str) -> Child {
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > '{}'; {script}", procs_file.display()))
        .spawn()
        .unwrap();
    let dir = procs_file.parent().unwrap();
    wait_until(|| read_procs(dir).unwrap().contains(&(child.id() as i32)));
    child
}

fn wait_until(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out");
        thread::sleep(Duration::from_millis(5));
    }
}

/// A process that no longer runs: gone, or a zombie nobody reaped yet
/// (orphans go to pid 1, which on these machines is not an init and
/// reaps them only after a while).
fn is_dead(pid: i32) -> bool {
    match nix::sys::signal::kill(Pid::from_raw(pid), None) {
        Err(Errno::ESRCH) => true,
        _ => fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('Z'))
            })
            .unwrap_or(true),
    }
}

fn killed_by(child: &mut Child, signal: Signal) {
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(signal as i32), "{status}");
}

#[test]
fn setup_joins_supervisor_and_shutdown_restores() {
    if !real_cgroups() {
        return;
    }
    let _lock = lock();
    let before = current_cgroup();
    let name = unique_name();
    let session = Session::new(&name);
    let manager = &session.manager;

    // We share our cgroup with the whole machine, so the base is a child.
    assert_eq!(manager.base(), current_cgroup_dir().parent().unwrap());
    assert_eq!(manager.base().file_name().unwrap(), name.as_str());
    assert_eq!(current_cgroup(), before.join(&name).join(SUPERVISOR));

    // Exactly what the base is offered, as far as we want it.
    let offered = fs::read_to_string(manager.base().join("cgroup.controllers")).unwrap();
    let expected = Controllers::from_list(&offered);
    eprintln!(
        "base {} offers {:?}; enabled {:?}, missing {:?}",
        manager.base().display(),
        offered.trim(),
        manager.controllers(),
        manager.controllers().missing()
    );
    assert_eq!(manager.controllers(), expected);
    assert_eq!(manager.controllers().missing(), expected.missing());

    manager.shutdown();
    assert_eq!(current_cgroup(), before);
    assert!(!manager.base().exists());
    // A second shutdown is a no-op.
    manager.shutdown();
}

#[test]
fn kill_reaches_children_and_escaped_grandchildren() {
    if !real_cgroups() {
        return;
    }
    let _lock = lock();
    let session = Session::new(&unique_name());
    let manager = &session.manager;
    let limits = Limits {
        memory_max: Some(256 << 20),
        swap_max: Some(0),
        pids_max: Some(64),
        cpu_max: Some(1.5),
    };
    let cgroup = manager.create("lifecycle", &limits).unwrap();
    assert_eq!(cgroup.path(), manager.base().join("action-lifecycle"));
    assert!(
        manager.create("lifecycle", &limits).is_err(),
        "exists already"
    );
    // Limits land only where the controller is enabled.
    let controllers = manager.controllers();
    if controllers.memory {
        assert_eq!(
            fs::read_to_string(cgroup.path().join("memory.max")).unwrap(),
            "268435456\n"
        );
    }
    if controllers.pids {
        assert_eq!(
            fs::read_to_string(cgroup.path().join("pids.max")).unwrap(),
            "64\n"
        );
    }
    if controllers.cpu {
        assert_eq!(
            fs::read_to_string(cgroup.path().join("cpu.max")).unwrap(),
            "150000 100000\n"
        );
    }

    let mut child = spawn_in(&cgroup.procs_file(), "exec sleep 100");
    // A grandchild in its own session, as a daemonizing action would make.
    let mut parent = spawn_in(&cgroup.procs_file(), "setsid sleep 100 & sleep 100");
    wait_until(|| cgroup.pids().unwrap().len() >= 3);
    let pids = cgroup.pids().unwrap();
    eprintln!("processes in {}: {pids:?}", cgroup.path().display());
    assert!(pids.contains(&(child.id() as i32)));
    assert!(pids.contains(&(parent.id() as i32)));

    cgroup.kill().unwrap();
    assert_eq!(cgroup.pids().unwrap(), Vec::<i32>::new());
    killed_by(&mut child, Signal::SIGKILL);
    killed_by(&mut parent, Signal::SIGKILL);
    for pid in pids {
        assert!(is_dead(pid), "pid {pid} survived");
    }
    // Killing an empty cgroup is fine.
    cgroup.kill().unwrap();

    let path = cgroup.path().to_owned();
    cgroup.remove().unwrap();
    assert!(!path.exists());
}

#[test]
fn signal_reaches_every_process() {
    if !real_cgroups() {
        return;
    }
    let _lock = lock();
    let session = Session::new(&unique_name());
    let cgroup = session
        .manager
        .create("signal", &Limits::default())
        .unwrap();
    let mut first = spawn_in(&cgroup.procs_file(), "exec sleep 100");
    let mut second = spawn_in(&cgroup.procs_file(), "exec sleep 100");
    cgroup.signal(Signal::SIGTERM).unwrap();
    killed_by(&mut first, Signal::SIGTERM);
    killed_by(&mut second, Signal::SIGTERM);
    cgroup.remove().unwrap();
}

#[test]
fn stats_account_cpu_time() {
    if !real_cgroups() {
        return;
    }
    let _lock = lock();
    let session = Session::new(&unique_name());
    let cgroup = session.manager.create("stats", &Limits::default()).unwrap();
    let mut busy = spawn_in(
        &cgroup.procs_file(),
        "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done",
    );
    assert!(busy.wait().unwrap().success());
    let stats = cgroup.stats();
    eprintln!("stats of a busy loop: {stats:?}");
    assert!(stats.usage_usec > 0, "{stats:?}");
    assert!(stats.user_usec + stats.system_usec > 0, "{stats:?}");
    // Present exactly when the controller's files are.
    let has = |file: &str| cgroup.path().join(file).exists();
    assert_eq!(stats.memory_peak.is_some(), has("memory.peak"));
    assert_eq!(stats.oom_kills.is_some(), has("memory.events"));
    assert_eq!(stats.pids_max_events.is_some(), has("pids.events"));
    assert_eq!(stats.oom_kills.unwrap_or(0), 0);
    cgroup.remove().unwrap();
}

#[test]
fn drop_kills_and_removes() {
    if !real_cgroups() {
        return;
    }
    let _lock = lock();
    let session = Session::new(&unique_name());
    let cgroup = session
        .manager
        .create("dropped", &Limits::default())
        .unwrap();
    let mut child = spawn_in(&cgroup.procs_file(), "exec sleep 100");
    let path = cgroup.path().to_owned();
    drop(cgroup);
    assert!(!path.exists());
    killed_by(&mut child, Signal::SIGKILL);
}

#[test]
fn freeze_fallback_kills_everything() {
    // The path for kernels without cgroup.kill (before 5.14).
    if !real_cgroups() {
        return;
    }
    let _lock = lock();
    let session = Session::new(&unique_name());
    let cgroup = session
        .manager
        .create("freeze", &Limits::default())
        .unwrap();
    let mut child = spawn_in(&cgroup.procs_file(), "exec sleep 100");
    let mut parent = spawn_in(&cgroup.procs_file(), "setsid sleep 100 & sleep 100");
    wait_until(|| cgroup.pids().unwrap().len() >= 3);
    cgroup.freeze_and_kill().unwrap();
    cgroup.wait_empty(KILL_TIMEOUT).unwrap();
    killed_by(&mut child, Signal::SIGKILL);
    killed_by(&mut parent, Signal::SIGKILL);
    let events = fs::read_to_string(cgroup.path().join("cgroup.events")).unwrap();
    assert_eq!(flat_keyed(&events, "frozen"), Some(0), "thawed again");
    cgroup.remove().unwrap();
}

#[test]
fn leftovers_of_a_crashed_run_are_killed_and_removed() {
    if !real_cgroups() {
        return;
    }
    let _lock = lock();
    let before = current_cgroup();
    let name = unique_name();

    // The "crashed" run: an action cgroup with a process in it, that
    // nobody removes.
    let mut first = Session::new(&name);
    let stale = first.manager.base().join("action-stale");
    fs::create_dir(&stale).unwrap();
    let mut sleeper = spawn_in(&stale.join("cgroup.procs"), "exec sleep 100");
    first.keep_actions = true;
    drop(first);
    assert_eq!(current_cgroup(), before);
    assert!(stale.exists());

    let second = Session::new(&name);
    assert!(!stale.exists());
    killed_by(&mut sleeper, Signal::SIGKILL);
    let base = second.manager.base().to_owned();
    drop(second);
    assert!(!base.exists());
    assert_eq!(current_cgroup(), before);
}

#[test]
fn refuses_a_supervisor_with_foreign_processes() {
    if !real_cgroups() {
        return;
    }
    let _lock = lock();
    let name = unique_name();
    let base = current_cgroup_dir().join(&name);
    let supervisor = base.join(SUPERVISOR);
    fs::create_dir_all(&supervisor).unwrap();
    let mut other = spawn_in(&supervisor.join("cgroup.procs"), "exec sleep 100");
    let result = Manager::setup(&name);
    let _ = nix::sys::signal::kill(Pid::from_raw(other.id() as i32), Signal::SIGKILL);
    let _ = other.wait();
    let removed = rmdir_retry(&supervisor).and_then(|()| rmdir_retry(&base));
    match result {
        Err(Error::InUse { path, pids }) => {
            assert_eq!(path, supervisor);
            assert_eq!(pids, [other.id() as i32]);
        }
        Ok(Setup::Ready(manager)) => {
            manager.shutdown();
            panic!("setup accepted another instance's supervisor");
        }
        other => panic!("{other:?}"),
    }
    removed.unwrap();
}

/// Environment variable that turns `delegated_child` on: the cgroup
/// directory it was started in.
const DELEGATED_ENV: &str = "NATIVELINK_LRE_CGROUP_TEST_DELEGATED";

#[test]
fn a_cgroup_holding_only_us_is_used_as_the_base() {
    // Stands in for systemd's Delegate=yes: run this test binary alone in
    // a fresh cgroup, where it runs `delegated_child`.
    if !real_cgroups() {
        return;
    }
    let _lock = lock();
    let unit = current_cgroup_dir().join(unique_name());
    fs::create_dir(&unit).unwrap();
    let output = Command::new("sh")
        .arg("-c")
        .arg("echo $$ > \"$1/cgroup.procs\"; shift; exec \"$@\"")
        .arg("sh")
        .arg(&unit)
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "cgroup::tests::delegated_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DELEGATED_ENV, &unit)
        .output()
        .unwrap();
    let removed = remove_tree(&unit);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{}\n{stdout}\n{stderr}",
        output.status
    );
    removed.unwrap();
}

/// The half of `a_cgroup_holding_only_us_is_used_as_the_base` that runs
/// in the delegated cgroup. Does nothing when run by hand.
#[test]
#[ignore = "run by a_cgroup_holding_only_us_is_used_as_the_base"]
fn delegated_child() {
    let Some(unit) = std::env::var_os(DELEGATED_ENV).map(PathBuf::from) else {
        return;
    };
    assert_eq!(current_cgroup_dir(), unit);
    let manager = ready("unused-subtree-name");
    assert!(manager.delegated);
    assert_eq!(manager.base(), unit);
    assert_eq!(current_cgroup_dir(), unit.join(SUPERVISOR));

    let cgroup = manager.create("in-unit", &Limits::default()).unwrap();
    assert_eq!(cgroup.path(), unit.join("action-in-unit"));
    let mut child = spawn_in(&cgroup.procs_file(), "exec sleep 100");
    cgroup.remove().unwrap();
    killed_by(&mut child, Signal::SIGKILL);

    manager.shutdown();
    assert_eq!(current_cgroup_dir(), unit);
    assert!(!unit.join(SUPERVISOR).exists());
    // Never removed: it belongs to systemd.
    assert!(unit.exists());
}
