# The nativelink-lre package: `pkgs.callPackage ./nix/package.nix { }`.
# Used by flake.nix (packages.default, overlays.default).
{
  lib,
  stdenv,
  rustPlatform,
  installShellFiles,
}:
let
  cargoToml = lib.importTOML ../Cargo.toml;
  # Only what the crate is built from, so that editing flake.nix, the
  # NixOS module or the docs does not rebuild the package.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../build.rs
      ../src
      ../proto
      ../benches # [[bench]] storage is declared in Cargo.toml
      ../tests
      ../man
      ../packaging
    ];
  };
in
rustPlatform.buildRustPackage {
  pname = cargoToml.package.name;
  inherit (cargoToml.package) version;
  inherit src;

  cargoLock.lockFile = ../Cargo.lock;

  # No protobuf compiler: build.rs compiles proto/ with protox (pure Rust),
  # so there is no `protoc` in nativeBuildInputs and no PROTOC to set.
  nativeBuildInputs = [ installShellFiles ];

  # The test suite needs root, user namespaces, cgroup v2 delegation,
  # systemd-socket-activate and Bazel (see tests/run and .ci/run); none of
  # that exists in the Nix build sandbox. The flake's `checks.vm` runs the
  # service for real in a NixOS VM instead.
  doCheck = false;

  # The release profile keeps line tables (Cargo.toml); the fixup phase strips
  # them from $out/bin and keeps them in the `debug` output, where gdb and
  # debuginfod find them by build id. The binary users get is the stripped one.
  separateDebugInfo = true;

  postInstall = ''
    installManPage man/*.[0-9]
  ''
  # Completions come from the program itself (clap_complete); it must run on
  # the build machine for that.
  + lib.optionalString (stdenv.buildPlatform.canExecute stdenv.hostPlatform) ''
    installShellCompletion --cmd nativelink-lre \
      --bash <("$out/bin/nativelink-lre" completions bash) \
      --zsh <("$out/bin/nativelink-lre" completions zsh) \
      --fish <("$out/bin/nativelink-lre" completions fish)
  ''
  + ''

    # The systemd units of packaging/systemd, with ExecStart pointing here.
    # (NixOS does not use these: its module generates units with the same
    # settings. They are for `systemd.packages` or other distributions.)
    units=(packaging/systemd/*.socket packaging/systemd/*.service)
    if [ ! -e "''${units[0]}" ]; then
      echo "no systemd units in packaging/systemd" >&2
      exit 1
    fi
    for unit in "''${units[@]}"; do
      install -Dm644 "$unit" "$out/lib/systemd/system/$(basename "$unit")"
    done
    sed -i -E "s#^(ExecStart=[-@:+!]*)[^ ]*/nativelink-lre( |\$)#\1$out/bin/nativelink-lre\2#" \
      "$out/lib/systemd/system/nativelink-lre.service"
    grep -q "^ExecStart=[-@:+!]*$out/bin/nativelink-lre" "$out/lib/systemd/system/nativelink-lre.service" || {
      echo "could not point ExecStart of nativelink-lre.service at $out/bin" >&2
      exit 1
    }
  '';

  meta = {
    description = cargoToml.package.description;
    license = lib.licenses.asl20;
    mainProgram = "nativelink-lre";
    platforms = lib.platforms.linux;
  };
}
