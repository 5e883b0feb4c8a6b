//! The NixOS module (nixos-module/): its pure logic in lib.nix, and the
//! module evaluated through the stand-in module system: what lands in
//! `systemd.*`, `environment.etc` and the generated settings, the old
//! options as aliases, and units with the same settings as
//! packaging/systemd/.

use super::*;

#[test]
fn module_logic_maps_settings_to_units() {
    let lib = path("nixos-module/lib.nix");
    let v = eval(&format!(
        r#"let
            l = import {lib};
            svc = settings: l.serviceUnit {{ package = "/pkg"; configFile = "/cfg"; inherit settings; }};
            units = settings: rec {{
              merged = l.settingsFor {{ inherit settings; }};
              sockets = l.socketUnits (l.listenOf merged);
              service = svc merged;
            }};
          in {{
            users = l.settingsFor {{ settings = {{ allowed-users = [ "@users" ]; trusted-users = [ "root" "@wheel" ]; }}; }};
            noTcp = units {{ listen.tcp = [ ]; }};
            noUnix = units {{ listen.unix = ""; }};
            twoTcp = units {{ listen = {{ tcp = [ "127.0.0.1:50051" "[::1]:50052" ]; unix = "/run/lre/sock"; unix-mode = "0660"; }}; }};
            ports = l.tcpPorts [ "127.0.0.1:50051" "[::1]:50052" ];
            oneKey = l.settingsFor {{ settings.store.max-size = "50GiB"; }};
            nonLoopback = l.nonLoopback [ "0.0.0.0:1" "[::]:2" "127.0.0.1:3" "127.1.2.3:4" "[::1]:5" "localhost:6" "10.0.0.1:7" ];
            problems = {{
              good = l.listenProblems (l.listenOf {{ }});
              wild = l.listenProblems (l.listenOf {{ listen.tcp = [ "0.0.0.0:50051" ]; }});
              relative = l.listenProblems (l.listenOf {{ listen.unix = "run/sock"; }});
              none = l.listenProblems (l.listenOf {{ listen = {{ unix = ""; tcp = [ ]; }}; }});
            }};
            stateVarLib = l.stateDirectoryConfig "/var/lib/lre/cas";
            stateElsewhere = l.stateDirectoryConfig "/srv/lre";
            tmpfilesVarLib = l.stateTmpfiles "/var/lib/lre";
            tmpfilesElsewhere = l.stateTmpfiles "/srv/lre";
            limit = (svc {{ }}).serviceConfig.LimitNOFILE;
          }}"#
    ));

    assert_eq!(v["users"]["allowed-users"], json!(["@users"]));
    assert_eq!(v["users"]["trusted-users"], json!(["root", "@wheel"]));
    assert_valid_config(&v["users"]);

    // listen.tcp = [] gives no TCP socket unit, and the service needs only
    // the unix socket; listen.unix = "" the other way round.
    let no_tcp = &v["noTcp"];
    assert_eq!(no_tcp["merged"]["listen"]["tcp"], json!([]));
    assert_eq!(
        no_tcp["sockets"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["nativelink-lre"]
    );
    assert_eq!(
        no_tcp["service"]["requires"],
        json!(["nativelink-lre.socket"])
    );
    assert_eq!(no_tcp["service"]["after"], json!(["nativelink-lre.socket"]));
    assert_eq!(
        no_tcp["service"]["serviceConfig"]["ExecStart"],
        "/pkg/bin/nativelink-lre --config /cfg"
    );
    assert_valid_config(&no_tcp["merged"]);
    let no_unix = &v["noUnix"];
    assert_eq!(
        no_unix["sockets"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["nativelink-lre-tcp"]
    );
    assert_eq!(
        no_unix["service"]["requires"],
        json!(["nativelink-lre-tcp.socket"])
    );
    let c = assert_valid_config(&no_unix["merged"]);
    assert_eq!(c.listen.unix, None);

    // The socket units are made from settings.listen: addresses, path, mode.
    let two = &v["twoTcp"];
    assert_eq!(
        two["sockets"]["nativelink-lre-tcp"]["listenStreams"],
        json!(["127.0.0.1:50051", "[::1]:50052"])
    );
    assert_eq!(
        two["sockets"]["nativelink-lre"]["listenStreams"],
        json!(["/run/lre/sock"])
    );
    assert_eq!(
        two["sockets"]["nativelink-lre"]["socketConfig"]["SocketMode"],
        "0660"
    );
    assert_eq!(v["ports"], json!([50051, 50052]));
    let c = assert_valid_config(&two["merged"]);
    assert_eq!(c.listen.tcp.len(), 2);
    assert_eq!(c.listen.unix.as_deref(), Some(Path::new("/run/lre/sock")));
    assert_eq!(c.listen.unix_mode.0, 0o660);

    // One key of `settings` replaces only that key.
    let one = &v["oneKey"];
    assert_eq!(one["store"]["max-size"], "50GiB");
    assert_eq!(one["store"]["high-watermark"], 90);
    assert_valid_config(one);

    // The module's loopback test agrees with the daemon's.
    assert_eq!(
        v["nonLoopback"],
        json!(["0.0.0.0:1", "[::]:2", "localhost:6", "10.0.0.1:7"])
    );
    for addr in ["0.0.0.0:1", "[::]:2", "10.0.0.1:7"] {
        let mut s = v["users"].clone();
        s["listen"]["tcp"] = json!([addr]);
        let err = check_config(&to_toml(&s)).expect_err(addr);
        assert!(err.contains("loopback"), "{err}");
    }
    for addr in ["127.0.0.1:3", "127.1.2.3:4", "[::1]:5"] {
        let mut s = v["users"].clone();
        s["listen"]["tcp"] = json!([addr]);
        check_config(&to_toml(&s)).unwrap();
    }
    let p = &v["problems"];
    assert_eq!(p["good"], json!([]));
    assert!(
        p["wild"][0].as_str().unwrap().contains("0.0.0.0:50051"),
        "{p}"
    );
    assert!(
        p["relative"][0]
            .as_str()
            .unwrap()
            .contains("not an absolute path"),
        "{p}"
    );
    assert!(
        p["none"][0]
            .as_str()
            .unwrap()
            .contains("nothing could reach"),
        "{p}"
    );
    // The daemon refuses the same relative path.
    let mut s = v["users"].clone();
    s["listen"]["unix"] = json!("run/sock");
    assert!(
        check_config(&to_toml(&s))
            .unwrap_err()
            .contains("relative path")
    );

    assert_eq!(v["stateVarLib"], json!({ "StateDirectory": "lre/cas" }));
    assert_eq!(
        v["stateElsewhere"],
        json!({ "ReadWritePaths": ["/srv/lre"] })
    );
    assert_eq!(v["tmpfilesVarLib"], json!([]));
    assert_eq!(
        v["tmpfilesElsewhere"],
        json!(["d /srv/lre 0755 root root - -"])
    );
    assert_eq!(v["limit"], 65536);
}

/// What the module puts into a NixOS configuration, for `user_config`.
fn module_result(user_config: &str) -> Value {
    eval(&format!(
        r#"let e = {}; c = e.config; in {{
            systemd = c.systemd or {{ }};
            assertions = c.assertions or [ ];
            warnings = c.warnings or [ ];
            firewall = c.networking.firewall or {{ }};
            packages = c.environment.systemPackages or [ ];
            etc = c.environment.etc or {{ }};
            settings = c.services.nativelink-lre.settings or null;
            configFile = let t = c.systemd.services.nativelink-lre.restartTriggers or [ ]; in
              if t == [ ] then null else {{
                path = builtins.head t;
                inherit (builtins.head t) script;
                unchecked = (builtins.head t).env.unchecked.value;
                uncheckedPath = (builtins.head t).env.unchecked;
              }};
          }}"#,
        eval_module(user_config)
    ))
}

fn failed_assertions(result: &Value) -> Vec<String> {
    result["assertions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["assertion"] == false)
        .map(|a| a["message"].as_str().unwrap().to_owned())
        .collect()
}

/// Issue 13.12: the options that shadowed `settings` are aliases of its
/// keys, so the socket units and the daemon can never disagree.
#[test]
fn old_options_are_aliases_of_settings_keys() {
    let old = module_result(
        r#"{ services.nativelink-lre = {
              enable = true;
              allowedUsers = [ "@users" ];
              trustedUsers = [ "root" "@wheel" ];
              listen.socket = "/run/lre/old.sock";
              listen.tcp = [ "127.0.0.1:50052" ];
            }; }"#,
    );
    let s = &old["settings"];
    assert_eq!(s["allowed-users"], json!(["@users"]));
    assert_eq!(s["trusted-users"], json!(["root", "@wheel"]));
    assert_eq!(s["listen"]["unix"], "/run/lre/old.sock");
    assert_eq!(s["listen"]["tcp"], json!(["127.0.0.1:50052"]));
    assert_eq!(s["store"]["max-size"], "10GiB", "the defaults stay");
    let sockets = &old["systemd"]["sockets"];
    assert_eq!(
        sockets["nativelink-lre"]["listenStreams"],
        json!(["/run/lre/old.sock"])
    );
    assert_eq!(
        sockets["nativelink-lre-tcp"]["listenStreams"],
        json!(["127.0.0.1:50052"])
    );
    let warnings: Vec<&str> = old["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    for (alias, key) in [
        ("allowedUsers", "allowed-users"),
        ("trustedUsers", "trusted-users"),
        ("listen.socket", "listen.unix"),
        ("listen.tcp", "listen.tcp"),
    ] {
        let want = format!(
            "services.nativelink-lre.{alias} is an alias of services.nativelink-lre.settings.{key}; set that instead."
        );
        assert!(
            warnings.contains(&want.as_str()),
            "{want:?} not in {warnings:?}"
        );
    }
    assert_eq!(old["configFile"]["unchecked"], *s);
    let c = assert_valid_config(s);
    assert_eq!(c.trusted_users, ["root", "@wheel"]);
}

/// Issue 13.12: settings.listen is what systemd listens on (it used to be
/// ignored under socket activation), and the file is in /etc.
#[test]
fn settings_listen_makes_the_socket_units() {
    let r = module_result(
        r#"{ services.nativelink-lre = {
              enable = true;
              settings.listen = { unix = "/run/lre/s"; unix-mode = "0660"; tcp = [ "127.0.0.1:50060" "[::1]:50061" ]; };
            }; }"#,
    );
    let sockets = &r["systemd"]["sockets"];
    assert_eq!(
        sockets["nativelink-lre"]["listenStreams"],
        json!(["/run/lre/s"])
    );
    assert_eq!(
        sockets["nativelink-lre"]["socketConfig"]["SocketMode"],
        "0660"
    );
    assert_eq!(
        sockets["nativelink-lre-tcp"]["listenStreams"],
        json!(["127.0.0.1:50060", "[::1]:50061"])
    );
    let c = assert_valid_config(&r["settings"]);
    assert_eq!(c.listen.unix.as_deref(), Some(Path::new("/run/lre/s")));
    assert_eq!(
        c.listen
            .tcp
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>(),
        ["127.0.0.1:50060", "[::1]:50061"]
    );
    assert_eq!(
        r["etc"]["nativelink-lre/config.toml"]["source"],
        r["configFile"]["path"]
    );
    let only_tcp = module_result(
        r#"{ services.nativelink-lre = { enable = true; settings.listen.unix = ""; }; }"#,
    );
    assert_eq!(
        only_tcp["systemd"]["sockets"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["nativelink-lre-tcp"]
    );
    assert_eq!(
        only_tcp["systemd"]["services"]["nativelink-lre"]["requires"],
        json!(["nativelink-lre-tcp.socket"])
    );
}

#[test]
fn nixos_module_generates_units_and_a_checked_config() {
    // Disabled: nothing at all.
    let off = module_result("{ }");
    assert_eq!(off["systemd"], json!({}), "{off:#}");
    assert_eq!(off["assertions"], json!([]));
    assert_eq!(off["configFile"], Value::Null);

    let on = module_result("{ services.nativelink-lre.enable = true; }");
    let sockets = &on["systemd"]["sockets"];
    assert_eq!(
        sockets.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["nativelink-lre", "nativelink-lre-tcp"]
    );
    assert_eq!(
        sockets["nativelink-lre"]["socketConfig"]["FileDescriptorName"],
        "unix"
    );
    assert_eq!(
        sockets["nativelink-lre-tcp"]["socketConfig"]["FileDescriptorName"],
        "tcp"
    );
    for unit in ["nativelink-lre", "nativelink-lre-tcp"] {
        assert_eq!(sockets[unit]["socketConfig"]["Accept"], false);
        assert_eq!(
            sockets[unit]["socketConfig"]["Service"],
            "nativelink-lre.service"
        );
        assert_eq!(sockets[unit]["wantedBy"], json!(["sockets.target"]));
    }
    let service = &on["systemd"]["services"]["nativelink-lre"];
    let file = &on["configFile"];
    let pkg = on["packages"][0].as_str().unwrap();
    assert_eq!(
        service["serviceConfig"]["ExecStart"],
        format!(
            "{pkg}/bin/nativelink-lre --config {}",
            file["path"].as_str().unwrap()
        )
    );
    // A new config restarts the service, never the sockets.
    assert_eq!(service["restartTriggers"], json!([file["path"]]));
    assert_eq!(service["stopIfChanged"], false);
    assert!(
        service.get("wantedBy").is_none(),
        "the sockets start the service"
    );
    // The file is checked by the daemon when it is built.
    let script = file["script"].as_str().unwrap();
    assert!(
        script.contains(&format!(
            "{pkg}/bin/nativelink-lre check-config --no-files \"$unchecked\""
        )),
        "{script}"
    );
    assert!(script.contains("cp \"$unchecked\" \"$out\""), "{script}");
    assert_eq!(file["unchecked"], on["settings"]);
    assert_valid_config(&on["settings"]);
    assert!(
        on["assertions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["assertion"] == true)
    );
    assert_eq!(on["warnings"], json!([]));
    assert_eq!(on["firewall"], json!({}));
    // The admin commands find the checked file at /etc/nativelink-lre.
    assert_eq!(
        on["etc"]["nativelink-lre/config.toml"]["source"], file["path"],
        "{:#}",
        on["etc"]
    );
    assert_eq!(on["systemd"]["tmpfiles"]["rules"], json!([]));
    assert_eq!(service["serviceConfig"]["StateDirectory"], "nativelink-lre");

    // Options and single settings keys; the defaults stay.
    let custom = module_result(
        r#"{ services.nativelink-lre = {
              enable = true;
              settings.listen.tcp = [ ];
              settings.listen.unix = "/run/lre/socket";
              settings.trusted-users = [ "root" "@wheel" ];
              settings.cgroup.memory-max = "64MiB";
              settings.store.max-size = "50GiB";
              settings.state-dir = "/srv/lre";
            }; }"#,
    );
    assert_eq!(custom["warnings"], json!([]));
    let s = &custom["settings"];
    assert_eq!(s["trusted-users"], json!(["root", "@wheel"]));
    assert_eq!(s["cgroup"]["memory-max"], "64MiB");
    assert_eq!(s["cgroup"]["pids-max"], 0);
    assert_eq!(s["store"]["max-size"], "50GiB");
    assert_eq!(s["store"]["low-watermark"], 80);
    assert_eq!(s["listen"]["unix"], "/run/lre/socket");
    assert_eq!(s["listen"]["tcp"], json!([]));
    assert_eq!(custom["configFile"]["unchecked"], *s);
    let c = assert_valid_config(s);
    assert_eq!(c.cgroup.memory_max.0, 64 << 20);
    let sockets = &custom["systemd"]["sockets"];
    assert_eq!(sockets.as_object().unwrap().len(), 1, "{sockets:#}");
    assert_eq!(
        sockets["nativelink-lre"]["listenStreams"],
        json!(["/run/lre/socket"])
    );
    let sc = &custom["systemd"]["services"]["nativelink-lre"]["serviceConfig"];
    assert_eq!(sc["ReadWritePaths"], json!(["/srv/lre"]));
    assert!(sc.get("StateDirectory").is_none(), "{sc:#}");
    // ReadWritePaths= of a missing directory stops the unit: tmpfiles
    // makes it first.
    assert_eq!(
        custom["systemd"]["tmpfiles"]["rules"],
        json!(["d /srv/lre 0755 root root - -"])
    );
    assert_eq!(
        custom["systemd"]["services"]["nativelink-lre"]["requires"],
        json!(["nativelink-lre.socket"])
    );

    // openFirewall opens the ports but warns; a non-loopback address is an
    // assertion failure, before the daemon would refuse it.
    let fw = module_result(
        r#"{ services.nativelink-lre = { enable = true; openFirewall = true; settings.listen.tcp = [ "127.0.0.1:50051" "0.0.0.0:4000" ]; }; }"#,
    );
    assert_eq!(fw["firewall"]["allowedTCPPorts"], json!([50051, 4000]));
    assert_eq!(fw["warnings"].as_array().unwrap().len(), 1);
    let failed: Vec<_> = fw["assertions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["assertion"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{fw:#}");
    assert!(
        failed[0]["message"]
            .as_str()
            .unwrap()
            .contains("0.0.0.0:4000")
    );

    let no_userns = module_result(
        "{ services.nativelink-lre.enable = true; security.allowUserNamespaces = false; }",
    );
    assert!(no_userns["assertions"].as_array().unwrap().iter().any(|a| {
        a["assertion"] == false
            && a["message"]
                .as_str()
                .unwrap()
                .contains("allowUserNamespaces")
    }));

    // A unix socket path that is not absolute, or no listener at all, is
    // refused by an assertion before the daemon would refuse it.
    let rel = module_result(
        r#"{ services.nativelink-lre = { enable = true; settings.listen.unix = "run/socket"; }; }"#,
    );
    let failed = failed_assertions(&rel);
    assert!(
        failed.len() == 1 && failed[0].starts_with("services.nativelink-lre.settings.listen.unix:"),
        "{failed:?}"
    );
    let none = module_result(
        r#"{ services.nativelink-lre = { enable = true; settings.listen = { unix = ""; tcp = [ ]; }; }; }"#,
    );
    assert!(
        failed_assertions(&none)
            .iter()
            .any(|m| m.contains("nothing could reach")),
        "{:#}",
        none["assertions"]
    );
    // An alias keeps its type: a list of strings.
    let err = eval_error(&format!(
        "{}.config.services.nativelink-lre.trustedUsers",
        eval_module(r#"{ services.nativelink-lre = { enable = true; trustedUsers = "root"; }; }"#)
    ));
    assert!(err.contains("trustedUsers"), "{err}");
}
/// Unit file text as `(section, key) -> words`, booleans spelled yes/no.
fn unit_file(text: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_owned();
            continue;
        }
        let (k, v) = line.split_once('=').expect("key=value");
        out.entry((section.clone(), k.trim().to_owned()))
            .or_default()
            .extend(v.split_whitespace().map(normalize_word));
    }
    out
}

fn normalize_word(w: &str) -> String {
    match w {
        "true" | "on" | "1" => "yes".into(),
        "false" | "off" | "0" => "no".into(),
        w => w.to_owned(),
    }
}

fn json_words(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().flat_map(json_words).collect(),
        Value::Bool(b) => vec![if *b { "yes" } else { "no" }.into()],
        Value::String(s) => s.split_whitespace().map(normalize_word).collect(),
        other => vec![other.to_string()],
    }
}

/// A NixOS unit (JSON of systemd.sockets.X or systemd.services.X) in the
/// shape of [`unit_file`].
fn nixos_unit(unit: &Value, body_section: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut out = BTreeMap::new();
    let mut put = |section: &str, key: &str, v: &Value| {
        if !v.is_null() {
            out.insert((section.to_owned(), key.to_owned()), json_words(v));
        }
    };
    put("Unit", "Description", &unit["description"]);
    put("Unit", "Documentation", &unit["documentation"]);
    put("Unit", "Requires", &unit["requires"]);
    put("Unit", "After", &unit["after"]);
    put("Socket", "ListenStream", &unit["listenStreams"]);
    put("Install", "WantedBy", &unit["wantedBy"]);
    for key in ["socketConfig", "serviceConfig"] {
        if let Some(map) = unit[key].as_object() {
            for (k, v) in map {
                put(body_section, k, v);
            }
        }
    }
    out
}

#[test]
fn nixos_units_match_packaging() {
    let dir = Path::new(ROOT).join("packaging/systemd");
    let on = module_result("{ services.nativelink-lre.enable = true; }");
    for (file, kind, name) in [
        ("nativelink-lre.socket", "sockets", "nativelink-lre"),
        ("nativelink-lre-tcp.socket", "sockets", "nativelink-lre-tcp"),
        ("nativelink-lre.service", "services", "nativelink-lre"),
    ] {
        let text = std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("packaging/systemd/{file}: {e}"));
        let mut packaged = unit_file(&text);
        let section = if kind == "sockets" {
            "Socket"
        } else {
            "Service"
        };
        let mut nixos = nixos_unit(&on["systemd"][kind][name], section);
        if kind == "services" {
            // NixOS has no [Install] for socket-activated services; and
            // ExecStart differs by design (store path, --config).
            packaged.retain(|(s, _), _| s != "Install");
            let packaged_exec = packaged
                .remove(&("Service".into(), "ExecStart".into()))
                .unwrap();
            let nixos_exec = nixos
                .remove(&("Service".into(), "ExecStart".into()))
                .unwrap();
            assert!(
                packaged_exec[0].ends_with("/nativelink-lre"),
                "{packaged_exec:?}"
            );
            assert!(
                nixos_exec[0].ends_with("/bin/nativelink-lre"),
                "{nixos_exec:?}"
            );
            assert_eq!(nixos_exec[1], "--config");
        }
        if kind == "services" && !packaged.contains_key(&("Service".into(), "LimitNOFILE".into())) {
            // Set in the module first; packaging/systemd gets its own line
            // with the descriptor-limit work, and then the two must agree.
            let limit = nixos.remove(&("Service".into(), "LimitNOFILE".into()));
            assert_eq!(limit, Some(vec!["524288".to_owned()]));
        }
        let only_packaged: Vec<_> = packaged
            .iter()
            .filter(|(k, v)| nixos.get(*k) != Some(v))
            .collect();
        let only_nixos: Vec<_> = nixos
            .iter()
            .filter(|(k, v)| packaged.get(*k) != Some(v))
            .collect();
        assert!(
            only_packaged.is_empty() && only_nixos.is_empty(),
            "{file}: the NixOS unit differs from packaging/systemd\n  packaging: {only_packaged:?}\n  NixOS:     {only_nixos:?}"
        );
    }
}
