# Flake check (checks.<system>.config-check): the module's configuration file
# is checked by `nativelink-lre check-config` when it is built, so a typo or an
# invalid value in `services.nativelink-lre.settings` fails the system build
# with the daemon's message. No VM: only the config file derivations are built.
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
  typo = configFileFor { store.max-sise = "50GiB"; };
  invalid = configFileFor { store.low-watermark = 95; };
in
pkgs.runCommand "nativelink-lre-config-check"
  {
    inherit good;
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
    # The daemon names the unknown key, and the value that breaks a rule.
    grep -F 'max-sise' $typoFailure/testBuildFailure.log
    grep -F 'low-watermark' $invalidFailure/testBuildFailure.log
    touch $out
  ''
