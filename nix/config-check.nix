# Flake check (checks.<system>.config-check): the module's configuration file
# is checked by `nativelink-lre check-config --no-files` when it is built, so a
# typo or an invalid value in `services.nativelink-lre.settings` fails the
# system build with the daemon's message, while the secrets that [upstream]
# names (header files, TLS keys), which are not in the Nix store, are left for
# the service to read when it starts. No VM: only the config file derivations
# are built.
{
  pkgs,
  nixosModule,
  package,
}:
let
  # The module puts the generated file in restartTriggers (and ExecStart).
  configFileFor =
    settings:
    builtins.head
      (pkgs.nixos {
        imports = [ nixosModule ];
        services.nativelink-lre = {
          enable = true;
          inherit package settings;
        };
      }).config.systemd.services.nativelink-lre.restartTriggers;

  good = configFileFor {
    store.max-size = "50GiB";
    cgroup.memory-max = "1GiB";
  };
  # Names a token file that does not exist here (nor in the build sandbox):
  # builds only because the module's check does not read it.
  secret = configFileFor {
    upstream = {
      endpoint = "grpcs://cache.example.com:443";
      header-files.authorization = "/run/secrets/nativelink-lre-config-check-token";
      write-back = true;
    };
  };
  typo = configFileFor { store.max-sise = "50GiB"; };
  invalid = configFileFor { store.low-watermark = 95; };
in
pkgs.runCommand "nativelink-lre-config-check"
  {
    inherit good secret;
    typoFailure = pkgs.testers.testBuildFailure typo;
    invalidFailure = pkgs.testers.testBuildFailure invalid;
  }
  ''
    set -x
    # The defaults are kept next to the user's key.
    grep -F 'max-size = "50GiB"' "$good"
    grep -F 'memory-max = "1GiB"' "$good"
    grep -F 'uid-range-start = 1879048192' "$good"
    grep -F 'state-dir = "/var/lib/nativelink-lre"' "$good"
    ${package}/bin/nativelink-lre check-config "$good"
    # Upstream secrets: skipped with --no-files, read (and missed) without.
    grep -F 'authorization = "/run/secrets/nativelink-lre-config-check-token"' "$secret"
    ${package}/bin/nativelink-lre check-config --no-files "$secret"
    if ${package}/bin/nativelink-lre check-config "$secret" 2>secret.err; then
      echo "check-config did not read the header file" >&2
      exit 1
    fi
    grep -F 'header-files' secret.err
    grep -F '/run/secrets/nativelink-lre-config-check-token' secret.err
    # The daemon names the unknown key, and the value that breaks a rule.
    grep -F 'max-sise' $typoFailure/testBuildFailure.log
    grep -F 'low-watermark' $invalidFailure/testBuildFailure.log
    touch $out
  ''
