//! The Nix integration (flake.nix, nixos-module/, nix/, templates/default/),
//! checked offline. Nixpkgs is not available here, so nothing is built; what
//! can be checked without it is, with Debian's `nix-instantiate` (package
//! nix-bin, installed by .ci/run):
//!
//! - every .nix file in the repository parses (which also catches undefined
//!   names: the files avoid `with`);
//! - nixos-module/lib.nix, the module's pure logic (builtins only), gives the
//!   daemon's defaults, and the settings it generates pass the daemon's own
//!   `check-config`;
//! - nixos-module/default.nix, evaluated through nix/offline/eval-module.nix
//!   (a small stand-in for the module system), puts the right units and
//!   settings into the configuration, and its units carry the same settings
//!   as packaging/systemd/;
//! - flake.nix has the required inputs and outputs, and its package
//!   expression installs the man pages and units (its install script runs
//!   here against a fake $out);
//! - the VM test's script and client are valid Python, and its
//!   configuration, and the config-check flake check's, are what the daemon
//!   accepts or refuses as they expect.
//!
//! What needs nixpkgs (building the package, the real module system, the VM
//! test) is left to `nix flake check`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use nativelink_lre::config::Config;
use serde_json::{Value, json};

/// The NixOS module itself: settings, aliases, units, /etc, tmpfiles.
#[path = "nix/module.rs"]
mod module;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_nativelink-lre");

/// Fails loudly when Nix is missing: these tests must not pass vacuously.
fn nix_instantiate() -> Command {
    let found = Command::new("nix-instantiate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        panic!(
            "\n\n*** nix-instantiate is not installed, so the Nix integration cannot be checked. ***\n\
             *** Install it with `apt-get install nix-bin` (.ci/run does this).              ***\n\n"
        );
    }
    let mut cmd = Command::new("nix-instantiate");
    cmd.current_dir(ROOT);
    cmd
}

/// A Nix expression for an absolute path in the repository.
fn path(rel: &str) -> String {
    let p = Path::new(ROOT).join(rel);
    format!("(/. + {:?})", p.display().to_string())
}

/// Evaluates a Nix expression strictly and returns it as JSON.
fn eval(expr: &str) -> Value {
    let out = nix_instantiate()
        .args(["--eval", "--strict", "--json", "--show-trace", "-E", expr])
        .output()
        .expect("run nix-instantiate");
    assert!(
        out.status.success(),
        "nix-instantiate failed on\n{expr}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("nix-instantiate printed JSON")
}

/// Evaluates an expression that must fail; returns the error message.
fn eval_error(expr: &str) -> String {
    let out = nix_instantiate()
        .args(["--eval", "--strict", "--json", "-E", expr])
        .output()
        .expect("run nix-instantiate");
    assert!(
        !out.status.success(),
        "expected an evaluation error from\n{expr}\nbut got {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The flake's outputs, with a stub nixpkgs input (only lazily used parts
/// may be forced).
fn flake_outputs() -> String {
    format!(
        "(let flake = import {}; outputs = flake.outputs {{ self = outputs; nixpkgs = {{ outPath = \"/nonexistent-nixpkgs\"; }}; }}; in outputs)",
        path("flake.nix")
    )
}

/// The flake's NixOS module evaluated through the stand-in module system with
/// `userConfig` (a Nix expression); yields `{ config; options; }`.
fn eval_module(user_config: &str) -> String {
    format!(
        "(import {} {{ module = {}.nixosModules.default; userConfig = {user_config}; }})",
        path("nix/offline/eval-module.nix"),
        flake_outputs()
    )
}

/// Settings as produced by the module (JSON) written as TOML.
fn to_toml(settings: &Value) -> String {
    let value = toml::Value::try_from(settings).expect("settings convert to TOML");
    toml::to_string(&value).expect("settings serialize as TOML")
}

/// Runs `nativelink-lre check-config` on TOML text.
fn check_config(text: &str) -> Result<(), String> {
    check_config_with(text, &[])
}

/// The same, with options such as `--no-files`.
fn check_config_with(text: &str, options: &[&str]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nativelink-lre.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .args(options)
        .arg(&file)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn assert_valid_config(settings: &Value) -> Config {
    let text = to_toml(settings);
    if let Err(e) = check_config(&text) {
        panic!("check-config refused the module's settings:\n{e}\n{text}");
    }
    Config::parse(&text, Path::new("module.toml")).unwrap()
}

fn nix_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let p = entry.path();
        let name = entry.file_name();
        if entry.file_type().unwrap().is_dir() {
            // Build outputs and hidden directories (.git, caches) hold no
            // sources of ours.
            if name != "target" && !name.to_string_lossy().starts_with('.') {
                nix_files(&p, out);
            }
        } else if p.extension().is_some_and(|e| e == "nix") {
            out.push(p);
        }
    }
}

#[test]
fn every_nix_file_parses() {
    let mut files = Vec::new();
    nix_files(Path::new(ROOT), &mut files);
    let rel: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(ROOT).unwrap().display().to_string())
        .collect();
    for required in [
        "flake.nix",
        "nixos-module/default.nix",
        "nixos-module/lib.nix",
        "nix/package.nix",
        "nix/vm-test.nix",
        "nix/config-check.nix",
        "nix/offline/eval-module.nix",
        "templates/default/flake.nix",
    ] {
        assert!(rel.iter().any(|r| r == required), "{required} is missing");
    }
    for file in &files {
        let out = nix_instantiate().arg("--parse").arg(file).output().unwrap();
        assert!(
            out.status.success(),
            "{} does not parse:\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn module_defaults_are_the_daemons() {
    let settings = eval(&format!(
        "(import {}).settingsFor {{ }}",
        path("nixos-module/lib.nix")
    ));
    assert_eq!(settings["state-dir"], "/var/lib/nativelink-lre");
    assert_eq!(settings["store"]["max-size"], "10GiB");
    assert_eq!(
        settings["sandbox"]["read-only-paths"],
        json!(["/nix/store"])
    );
    assert_eq!(settings["sandbox"]["uid-range-start"], 1_879_048_192);
    assert_eq!(settings["sandbox"]["uid-range-count"], 65536);
    assert_eq!(settings["allowed-users"], json!(["*"]));
    assert_eq!(settings["trusted-users"], json!(["root"]));
    assert_eq!(settings["listen"]["unix"], "/run/nativelink-lre/socket");
    assert_eq!(settings["listen"]["tcp"], json!(["127.0.0.1:50051"]));

    // The daemon reads them as exactly its own defaults (for root), except
    // for the read-only paths, which are the store alone on NixOS.
    let c = assert_valid_config(&settings);
    let d = Config::default();
    let same = |what: &str, a: String, b: String| assert_eq!(a, b, "{what} differs");
    same("store", format!("{:?}", c.store), format!("{:?}", d.store));
    same(
        "action-cache",
        format!("{:?}", c.action_cache),
        format!("{:?}", d.action_cache),
    );
    same(
        "execution",
        format!("{:?}", c.execution),
        format!("{:?}", d.execution),
    );
    same(
        "cgroup",
        format!("{:?}", c.cgroup),
        format!("{:?}", d.cgroup),
    );
    same(
        "sandbox",
        format!(
            "{:?}",
            (
                c.sandbox.tmp_size,
                c.sandbox.uid_range_start,
                c.sandbox.uid_range_count,
                c.sandbox.allow_host_network
            )
        ),
        format!(
            "{:?}",
            (
                d.sandbox.tmp_size,
                d.sandbox.uid_range_start,
                d.sandbox.uid_range_count,
                d.sandbox.allow_host_network
            )
        ),
    );
    assert_eq!(
        c.sandbox.read_only_paths(),
        vec![PathBuf::from("/nix/store")]
    );
    same(
        "top-level keys",
        format!(
            "{:?}",
            (
                &c.instance_names,
                &c.allowed_users,
                &c.trusted_users,
                c.untrusted_action_cache_writes,
                c.idle_timeout,
                &c.log_level
            )
        ),
        format!(
            "{:?}",
            (
                &d.instance_names,
                &d.allowed_users,
                &d.trusted_users,
                d.untrusted_action_cache_writes,
                d.idle_timeout,
                &d.log_level
            )
        ),
    );
    same(
        "listen",
        format!("{:?}", (c.listen.unix_mode, &c.listen.tcp)),
        format!("{:?}", (d.listen.unix_mode, &d.listen.tcp)),
    );
    assert_eq!(c.state_dir(), Path::new("/var/lib/nativelink-lre"));
    assert_eq!(
        c.listen.unix.as_deref(),
        Some(Path::new("/run/nativelink-lre/socket"))
    );
}

#[test]
fn flake_has_the_required_inputs_and_outputs() {
    let v = eval(&format!(
        r#"let flake = import {flake}; o = {outputs}; names = builtins.attrNames; in {{
            inputs = flake.inputs;
            args = builtins.functionArgs flake.outputs;
            outputs = names o;
            packages = builtins.mapAttrs (_: names) o.packages;
            checks = builtins.mapAttrs (_: names) o.checks;
            devShells = builtins.mapAttrs (_: names) o.devShells;
            modules = names o.nixosModules;
            moduleIsFunction = builtins.isFunction o.nixosModules.default;
            overlayIsFunction = builtins.isFunction o.overlays.default;
            template = {{
              path = toString o.templates.default.path;
              inherit (o.templates.default) description;
            }};
          }}"#,
        flake = path("flake.nix"),
        outputs = flake_outputs()
    ));
    assert_eq!(
        v["inputs"],
        json!({ "nixpkgs": { "url": "github:NixOS/nixpkgs/nixos-unstable" } })
    );
    assert_eq!(v["args"], json!({ "nixpkgs": false, "self": false }));
    assert_eq!(
        v["outputs"],
        json!([
            "checks",
            "devShells",
            "nixosModules",
            "overlays",
            "packages",
            "templates"
        ])
    );
    for system in ["x86_64-linux", "aarch64-linux"] {
        assert_eq!(v["packages"][system], json!(["default", "nativelink-lre"]));
        assert_eq!(
            v["checks"][system],
            json!(["config-check", "package", "vm"])
        );
        assert_eq!(v["devShells"][system], json!(["default"]));
    }
    assert_eq!(v["packages"].as_object().unwrap().len(), 2);
    assert_eq!(v["modules"], json!(["default", "nativelink-lre"]));
    assert_eq!(v["moduleIsFunction"], true);
    assert_eq!(v["overlayIsFunction"], true);

    let template = PathBuf::from(v["template"]["path"].as_str().unwrap());
    assert_eq!(template, Path::new(ROOT).join("templates/default"));
    assert!(!v["template"]["description"].as_str().unwrap().is_empty());
    for f in [
        "flake.nix",
        ".bazelrc",
        "MODULE.bazel",
        "WORKSPACE",
        "BUILD.bazel",
        "README.md",
        ".gitignore",
    ] {
        assert!(
            template.join(f).is_file(),
            "templates/default/{f} is missing"
        );
    }
    let bazelrc = std::fs::read_to_string(template.join(".bazelrc")).unwrap();
    for line in [
        "build --remote_executor=grpc://127.0.0.1:50051",
        "build --remote_cache=grpc://127.0.0.1:50051",
        "build --incompatible_strict_action_env",
        "try-import %workspace%/.bazelrc.nix",
    ] {
        assert!(bazelrc.lines().any(|l| l == line), ".bazelrc lacks {line}");
    }
    let t = eval(&format!(
        "let f = import {}; in {{ inherit (f) inputs; args = builtins.functionArgs f.outputs; }}",
        path("templates/default/flake.nix")
    ));
    assert_eq!(
        t["inputs"],
        json!({ "nixpkgs": { "url": "github:NixOS/nixpkgs/nixos-unstable" } })
    );
}

/// The package expression, called through the flake's overlay with stub
/// `lib`, `rustPlatform` and `installShellFiles`: buildRustPackage returns
/// its arguments.
fn package_args() -> Value {
    eval(&format!(
        r#"let
            o = {outputs};
            lib = {{
              importTOML = p: builtins.fromTOML (builtins.readFile p);
              fileset = {{
                unions = ps: map (p: if builtins.pathExists p then toString p else throw "fileset: ${{toString p}} does not exist") ps;
                toSource = {{ root, fileset }}: {{ root = toString root; files = fileset; }};
              }};
              licenses.asl20 = "asl20";
              optionalString = c: s: if c then s else "";
              platforms.linux = [ "x86_64-linux" "aarch64-linux" ];
            }};
            stubs = {{
              inherit lib;
              rustPlatform.buildRustPackage = args: args;
              installShellFiles = "installShellFiles";
              stdenv = {{ buildPlatform.canExecute = _: true; hostPlatform = {{ }}; }};
            }};
            final = {{
              callPackage = f: extra: let fn = import f; in fn (builtins.intersectAttrs (builtins.functionArgs fn) stubs // extra);
            }};
            p = (o.overlays.default final {{ }}).nativelink-lre;
          in p // {{ cargoLock.lockFile = toString p.cargoLock.lockFile; }}"#,
        outputs = flake_outputs()
    ))
}

#[test]
fn package_expression_builds_the_crate_and_installs_man_pages_and_units() {
    let p = package_args();
    assert_eq!(p["pname"], "nativelink-lre");
    assert_eq!(p["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(p["doCheck"], false);
    // Stripped in $out, the debug info in its own output (issue 13.13).
    assert_eq!(p["separateDebugInfo"], true);
    assert!(p.get("dontStrip").is_none());
    assert_eq!(
        p["cargoLock"]["lockFile"],
        Path::new(ROOT).join("Cargo.lock").display().to_string()
    );
    assert_eq!(p["src"]["root"], ROOT);
    let files: Vec<String> = p["src"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().strip_prefix(ROOT).unwrap().to_owned())
        .collect();
    for f in [
        "/Cargo.toml",
        "/Cargo.lock",
        "/build.rs",
        "/src",
        "/proto",
        "/benches",
        "/tests",
        "/man",
        "/packaging",
    ] {
        assert!(files.iter().any(|x| x == f), "src lacks {f}: {files:?}");
    }
    assert_eq!(p["meta"]["mainProgram"], "nativelink-lre");

    // Run the install script as stdenv would (set -eu -o pipefail), with
    // stand-ins for installManPage and installShellCompletion, from a copy
    // of the source, with the real program in $out/bin.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&src).unwrap();
    for d in ["man", "packaging"] {
        let status = Command::new("cp")
            .arg("-a")
            .arg(Path::new(ROOT).join(d))
            .arg(src.join(d))
            .status()
            .unwrap();
        assert!(status.success(), "cp {d}");
    }
    std::fs::create_dir_all(out.join("bin")).unwrap();
    std::fs::copy(BIN, out.join("bin/nativelink-lre")).unwrap();
    let script = format!(
        "installManPage() {{ for f in \"$@\"; do install -Dm644 \"$f\" \"$out/share/man/man${{f##*.}}/$(basename \"$f\")\"; done; }}\n\
         installShellCompletion() {{ [ \"$1\" = --cmd ]; cmd=$2; shift 2; while [ $# -gt 0 ]; do install -Dm644 \"$2\" \"$out/share/completions/$cmd.${{1#--}}\"; shift 2; done; }}\n{}",
        p["postInstall"].as_str().unwrap()
    );
    let status = Command::new("bash")
        .args(["-eu", "-o", "pipefail", "-c", &script])
        .current_dir(&src)
        .env("out", &out)
        .status()
        .unwrap();
    assert!(status.success(), "postInstall failed");
    for man in [
        "share/man/man8/nativelink-lre.8",
        "share/man/man5/nativelink-lre.toml.5",
    ] {
        assert!(out.join(man).is_file(), "{man} not installed");
    }
    for (shell, needle) in [
        ("bash", "complete -F _nativelink__lre"),
        ("zsh", "#compdef nativelink-lre"),
        ("fish", "complete -c nativelink-lre"),
    ] {
        let text =
            std::fs::read_to_string(out.join(format!("share/completions/nativelink-lre.{shell}")))
                .unwrap_or_else(|e| panic!("no {shell} completion installed: {e}"));
        assert!(text.contains(needle), "{shell}: {text}");
    }
    let units = out.join("lib/systemd/system");
    for unit in ["nativelink-lre.socket", "nativelink-lre-tcp.socket"] {
        assert_eq!(
            std::fs::read_to_string(units.join(unit)).unwrap(),
            std::fs::read_to_string(src.join("packaging/systemd").join(unit)).unwrap(),
            "{unit}"
        );
    }
    let service = std::fs::read_to_string(units.join("nativelink-lre.service")).unwrap();
    let exec: Vec<&str> = service
        .lines()
        .filter(|l| l.starts_with("ExecStart="))
        .collect();
    assert_eq!(exec.len(), 1, "{exec:?}");
    let exec = exec[0].strip_prefix("ExecStart=").unwrap();
    assert_eq!(
        exec.split_whitespace().next().unwrap(),
        format!("{}/bin/nativelink-lre", out.display())
    );
}

fn python3() -> &'static str {
    let ok = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "python3 is needed to check the VM test's Python");
    "python3"
}

fn python_compiles(name: &str, source: &str) {
    let out = Command::new(python3())
        .args([
            "-c",
            "import ast, sys; ast.parse(sys.stdin.read(), sys.argv[1])",
            name,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(source.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{name} is not valid Python:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stub derivations for the VM test and the config check.
const STUB_PKGS: &str = r#"
  stubDrv = name: { type = "derivation"; inherit name; outPath = "/nix/store/00000000000000000000000000000000-${name}"; };
"#;

#[test]
fn vm_test_is_valid_and_its_configuration_is_accepted() {
    let v = eval(&format!(
        r#"let
            {STUB_PKGS}
            o = {outputs};
            pkgs = {{
              bash = stubDrv "bash";
              python3 = stubDrv "python3" // {{
                withPackages = f: builtins.seq (builtins.deepSeq (f {{ grpcio = stubDrv "grpcio"; }}) null) (stubDrv "python3-env");
              }};
              writeShellScriptBin = name: text: stubDrv name // {{ inherit text; }};
              testers.runNixOSTest = args: args;
            }};
            t = import {vmtest} {{ inherit pkgs; nixosModule = o.nixosModules.default; package = stubDrv "nativelink-lre"; }};
            machine = (import {evalmodule} {{ module = t.nodes.machine; }}).config;
            client = builtins.head (builtins.filter (p: p.name == "lre-client") machine.environment.systemPackages);
          in {{
            inherit (t) name testScript;
            settings = machine.services.nativelink-lre.settings;
            sockets = builtins.attrNames machine.systemd.sockets;
            clientText = client.text;
          }}"#,
        outputs = flake_outputs(),
        vmtest = path("nix/vm-test.nix"),
        evalmodule = path("nix/offline/eval-module.nix"),
    ));
    assert_eq!(v["name"], "nativelink-lre");
    let script = v["testScript"].as_str().unwrap();
    python_compiles("testScript of nix/vm-test.nix", script);
    for needle in [
        "wait_for_unit(\"nativelink-lre.socket\")",
        "wait_for_open_port(50051)",
        "512 << 20",
    ] {
        assert!(script.contains(needle), "the VM test lacks {needle}");
    }
    assert!(
        v["clientText"].as_str().unwrap().contains("vm-client.py"),
        "{}",
        v["clientText"]
    );
    python_compiles(
        "nix/vm-client.py",
        &std::fs::read_to_string(Path::new(ROOT).join("nix/vm-client.py")).unwrap(),
    );

    // The VM's configuration is one the daemon accepts, with the limit the
    // memory hog must hit.
    assert_eq!(
        v["sockets"],
        json!(["nativelink-lre", "nativelink-lre-tcp"])
    );
    let c = assert_valid_config(&v["settings"]);
    assert_eq!(c.cgroup.memory_max.0, 64 << 20);
    assert!(c.cgroup.require_controllers);
    assert_eq!(c.trusted_users, ["root", "@wheel"]);
}

#[test]
fn config_check_expectations_hold_for_the_daemon() {
    let v = eval(&format!(
        r#"let
            {STUB_PKGS}
            o = {outputs};
            pkgs = {{
              nixos = m: import {evalmodule} {{ module = m; }};
              testers.testBuildFailure = drv: stubDrv "failure" // {{ inherit drv; }};
              runCommand = name: env: script: {{ inherit name env script; }};
            }};
            check = import {configcheck} {{ inherit pkgs; nixosModule = o.nixosModules.default; package = stubDrv "nativelink-lre"; }};
          in {{
            inherit (check) script;
            good = check.env.good.env.unchecked.value;
            secret = check.env.secret.env.unchecked.value;
            typo = check.env.typoFailure.drv.env.unchecked.value;
            invalid = check.env.invalidFailure.drv.env.unchecked.value;
          }}"#,
        outputs = flake_outputs(),
        evalmodule = path("nix/offline/eval-module.nix"),
        configcheck = path("nix/config-check.nix"),
    ));
    let good = to_toml(&v["good"]);
    check_config(&good).unwrap();
    // The check greps the generated file for these lines.
    let script = v["script"].as_str().unwrap();
    for line in script.lines() {
        if let Some(rest) = line.trim().strip_prefix("grep -F '") {
            let (needle, file) = rest.split_once("' ").unwrap();
            if file == "\"$good\"" {
                assert!(
                    good.lines().any(|l| l.trim() == needle),
                    "config-check expects {needle:?} in\n{good}"
                );
            }
        }
    }
    // The upstream's token file is not readable where the module is built:
    // the build-time check skips it, a full check names it.
    let secret = to_toml(&v["secret"]);
    check_config_with(&secret, &["--no-files"]).unwrap();
    let err = check_config(&secret).unwrap_err();
    assert!(
        err.contains("header-files")
            && err.contains("/run/secrets/nativelink-lre-config-check-token"),
        "{err}"
    );
    assert!(
        script.contains("check-config --no-files \"$secret\""),
        "{script}"
    );
    let err = check_config(&to_toml(&v["typo"])).unwrap_err();
    assert!(err.contains("max-sise"), "{err}");
    assert!(script.contains("grep -F 'max-sise' $typoFailure/testBuildFailure.log"));
    let err = check_config(&to_toml(&v["invalid"])).unwrap_err();
    assert!(err.contains("low-watermark"), "{err}");
    assert!(script.contains("grep -F 'low-watermark' $invalidFailure/testBuildFailure.log"));
}
