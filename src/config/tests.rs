use super::*;
use std::path::Path;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

#[test]
fn empty_file_gives_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.instance_names, vec![String::new()]);
    assert_eq!(c.store.max_batch_size, ByteSize(4 << 20));
    assert!(c.state_dir.is_some());
    assert!(c.listen.unix.is_some());
}

#[test]
fn unknown_key_names_key_and_line() {
    let err = parse("instance-names = [\"\"]\n\n[store]\nmax-sise = 5\n").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("test.toml:4:1"), "{msg}");
    assert!(msg.contains("max-sise"), "{msg}");
}

#[test]
fn unknown_top_level_key_is_an_error() {
    let msg = parse("stat-dir = \"/x\"\n").unwrap_err().to_string();
    assert!(
        msg.contains("test.toml:1:1") && msg.contains("stat-dir"),
        "{msg}"
    );
}

#[test]
fn sizes_and_durations_parse() {
    let c = parse(
        "idle-timeout = \"2m\"\n[store]\nmax-size = \"3GiB\"\n[action-cache]\ninline-max-size = 4096\n",
    )
    .unwrap();
    assert_eq!(c.idle_timeout.0, Duration::from_secs(120));
    assert_eq!(c.store.max_size.0, 3 << 30);
    assert_eq!(c.action_cache.inline_max_size.0, 4096);
}

#[test]
fn bad_size_names_line() {
    let msg = parse("[store]\nmax-size = \"3 parsecs\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("test.toml:2:") && msg.contains("parsecs"),
        "{msg}"
    );
}

#[test]
fn watermarks_are_checked() {
    let msg = parse("[store]\nhigh-watermark = 50\nlow-watermark = 60\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("test.toml:3") && msg.contains("low-watermark"),
        "{msg}"
    );
}

#[test]
fn non_loopback_tcp_is_refused() {
    let msg = parse("[listen]\ntcp = [\"0.0.0.0:50051\"]\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("loopback"), "{msg}");
}

#[test]
fn empty_unix_path_disables_the_socket() {
    let c = parse("[listen]\nunix = \"\"\n").unwrap();
    assert!(c.listen.unix.is_none());
}

#[test]
fn execution_sections_parse_and_validate() {
    let c = parse(
        "[execution]\nmax-concurrent-actions = 3\nplatform = { OSFamily = \"Linux\", pool = [\"a\", \"b\"] }\n[sandbox]\nread-only-paths = [\"/usr\"]\n[cgroup]\nmemory-max = \"1GiB\"\ncpu-max = 1.5\n",
    )
    .unwrap();
    assert_eq!(c.execution.max_concurrent_actions, 3);
    assert!(c.execution.platform["pool"].contains("b"));
    assert_eq!(c.sandbox.read_only_paths(), vec![PathBuf::from("/usr")]);
    assert_eq!(c.cgroup.memory_max.0, 1 << 30);
    let msg = parse("[sandbox]\nread-only-paths = [\"usr\"]\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("read-only-paths") && msg.contains(":2"),
        "{msg}"
    );
    let msg = parse("[execution]\ndefault-timeout = \"2h\"\nmax-timeout = \"1h\"\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("default-timeout"), "{msg}");
}

#[test]
fn reserved_instance_name_is_refused() {
    let msg = parse("instance-names = [\"main/blobs\"]\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("instance-names"), "{msg}");
}

#[test]
fn upstream_is_validated_key_by_key() {
    let c = parse("[upstream]\nendpoint = \"grpcs://cache.example.com:443\"\nheaders = { \"x-team\" = \"a\" }\n").unwrap();
    assert_eq!(
        c.upstream.endpoint(),
        Some(Endpoint::Grpcs("cache.example.com:443".into()))
    );
    assert_eq!(
        c.upstream.endpoint().unwrap().host(),
        Some("cache.example.com")
    );
    assert_eq!(parse("").unwrap().upstream.endpoint(), None);
    assert_eq!(
        Endpoint::parse("unix:///run/x.sock"),
        Ok(Endpoint::Unix("/run/x.sock".into()))
    );
    assert_eq!(
        Endpoint::parse("grpc://[::1]:8980").unwrap().host(),
        Some("::1")
    );
    for (text, key, why) in [
        ("endpoint = \"http://x:1\"", "endpoint", "grpc://"),
        ("endpoint = \"grpc://x\"", "endpoint", "no port"),
        ("endpoint = \"unix:rel/sock\"", "endpoint", "absolute"),
        (
            "endpoint = \"grpc://x:1\"\ntls-ca-file = \"/ca.pem\"",
            "tls-ca-file",
            "grpcs://",
        ),
        (
            "endpoint = \"grpcs://x:1\"\ntls-client-cert = \"/c.pem\"",
            "tls-client-cert",
            "tls-client-key",
        ),
        (
            "endpoint = \"grpc://x:1\"\nheaders = { \"Authorization\" = \"t\" }",
            "headers",
            "not a header name",
        ),
        (
            "endpoint = \"grpc://x:1\"\nheaders = { \"grpc-timeout\" = \"1\" }",
            "headers",
            "reserved",
        ),
        (
            "endpoint = \"grpc://x:1\"\nheader-files = { authorization = \"token\" }",
            "header-files",
            "absolute",
        ),
        (
            "endpoint = \"grpc://x:1\"\nmax-concurrent-calls = 0",
            "max-concurrent-calls",
            "at least 1",
        ),
        (
            "endpoint = \"grpc://x:1\"\nretry-min = \"2m\"\nretry-max = \"1m\"",
            "retry-min",
            "retry-max",
        ),
    ] {
        let msg = parse(&format!("[upstream]\n{text}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(key) && msg.contains(why) && msg.contains("test.toml:"),
            "{text}: {msg}"
        );
    }
    let msg = parse("[upstream]\nendpont = \"grpc://x:1\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("test.toml:2:1") && msg.contains("endpont"),
        "{msg}"
    );
}
