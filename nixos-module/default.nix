# NixOS module for nativelink-lre: a local Bazel Remote Execution API v2
# service (shared CAS, action cache, hermetic execution), socket-activated.
#
#   services.nativelink-lre = {
#     enable = true;
#     trustedUsers = [ "root" "@wheel" ];
#     settings.store.max-size = "50GiB";
#     settings.cgroup.memory-max = "8GiB";
#   };
#
# The pure parts (defaults, derived settings, unit definitions) live in
# ./lib.nix, which uses builtins only so that tests/nix.rs can evaluate them
# without nixpkgs. This file is the glue to the module system. It avoids
# `with lib;` so that `nix-instantiate --parse` reports undefined names.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.nativelink-lre;
  nlLib = import ./lib.nix;
  settingsFormat = pkgs.formats.toml { };

  uncheckedConfigFile = settingsFormat.generate "nativelink-lre-unchecked.toml" cfg.settings;

  # The daemon checks the file at build time, so a typo or an invalid value
  # fails `nixos-rebuild` with the daemon's own message (key, line, column)
  # instead of a service that will not start. Skipped only when the build
  # machine cannot run the target's binary (cross-compilation).
  # --no-files: the files that [upstream] names (CA, client certificate and
  # key, header-files) are secrets outside the Nix store, absent from the
  # build sandbox; the daemon reads them when it starts.
  canRunDaemon = pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform;
  configFile =
    pkgs.runCommand "nativelink-lre.toml"
      {
        unchecked = uncheckedConfigFile;
        preferLocalBuild = true;
        allowSubstitutes = false;
      }
      ''
        ${lib.optionalString canRunDaemon "${cfg.package}/bin/nativelink-lre check-config --no-files \"$unchecked\""}
        cp "$unchecked" "$out"
      '';

  nonLoopback = nlLib.nonLoopback cfg.listen.tcp;
in
{
  options.services.nativelink-lre = {
    enable = lib.mkEnableOption ''
      nativelink-lre, a local Bazel Remote Execution API v2 service: a content
      addressed store and action cache shared by every user of the machine,
      and hermetic execution of build actions in namespaces and cgroups.
      The service is started on demand by its sockets'';

    package = lib.mkPackageOption pkgs "nativelink-lre" { };

    settings = lib.mkOption {
      type = settingsFormat.type;
      default = { };
      description = ''
        The daemon's configuration, written to a TOML file that is checked at
        build time with {command}`nativelink-lre check-config --no-files`.
        Every key is documented in {manpage}`nativelink-lre.toml(5)`.

        The files that `upstream` names (`tls-ca-file`, `tls-client-cert`,
        `tls-client-key`, `header-files`) are not read at build time, so they
        can be secrets outside the Nix store, such as
        `upstream.header-files.authorization = "/run/secrets/lre-upstream-token"`;
        the service, which runs as root, reads them when it starts. Never put
        a secret in `upstream.headers`: its value ends up in the Nix store.

        The module sets the daemon's defaults here with `mkDefault`, so
        setting one key (for example `settings.store.max-size`) keeps the
        others. On NixOS the sandbox exposes only {file}`/nix/store`
        (`sandbox.read-only-paths`), since every tool an action can run lives
        there. `allowed-users`, `trusted-users` and `listen` come from the
        options of the same names; setting them here overrides those.
      '';
      example = lib.literalExpression ''
        {
          store.max-size = "50GiB";
          execution.max-concurrent-actions = 4;
          cgroup = {
            memory-max = "8GiB";
            pids-max = 4096;
          };
          upstream = {
            endpoint = "grpcs://cache.example.com:443";
            header-files.authorization = "/run/secrets/lre-upstream-token";
            write-back = true;
          };
        }
      '';
    };

    listen = {
      socket = lib.mkOption {
        type = lib.types.strMatching "/.+";
        default = nlLib.optionDefaults.socket;
        description = ''
          Path of the unix socket (socket unit {file}`nativelink-lre.socket`,
          mode 0666; `allowedUsers` decides who may use it).
        '';
      };
      tcp = lib.mkOption {
        type = lib.types.listOf lib.types.str;
        default = nlLib.optionDefaults.tcp;
        example = [
          "127.0.0.1:50051"
          "[::1]:50051"
        ];
        description = ''
          Loopback TCP addresses (`ip:port`, IPv6 in brackets) of the socket
          unit {file}`nativelink-lre-tcp.socket`. An empty list disables that
          unit. The daemon identifies callers only on loopback, so any other
          address is refused (by an assertion here, and by the daemon).
        '';
      };
    };

    allowedUsers = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = nlLib.optionDefaults.allowedUsers;
      example = [ "@users" ];
      description = ''
        Who may use the service at all: `*`, user names, uids, or `@group`.
        Written to `settings.allowed-users`.
      '';
    };

    trustedUsers = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = nlLib.optionDefaults.trustedUsers;
      example = [
        "root"
        "@wheel"
      ];
      description = ''
        Whose action-cache writes go to the cache that every user reads; the
        writes of everyone else go to a private per-user view. Written to
        `settings.trusted-users`.
      '';
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Open the ports of `listen.tcp` in the firewall. This has no effect
        today: the daemon listens on loopback only, which the NixOS firewall
        always accepts. It would matter only with a non-loopback address in
        `listen.tcp`, which the daemon refuses (callers cannot be identified
        there); a warning says so when this is set.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = nonLoopback == [ ];
        message = ''
          services.nativelink-lre.listen.tcp: ${builtins.concatStringsSep ", " nonLoopback}:
          only loopback addresses (127.0.0.0/8, [::1]) with a port are allowed;
          nativelink-lre identifies callers only on loopback.
        '';
      }
      {
        assertion = config.security.allowUserNamespaces;
        message = ''
          services.nativelink-lre runs every action in user, mount and pid
          namespaces; it needs security.allowUserNamespaces = true.
        '';
      }
    ];

    warnings = lib.optional cfg.openFirewall ''
      services.nativelink-lre.openFirewall has no effect: the daemon listens on
      loopback only, and the firewall always accepts loopback traffic. Other
      machines cannot use this service.
    '';

    # The daemon's defaults, at mkDefault priority, leaf by leaf: a user's
    # `settings.store.max-size = "50GiB"` replaces that key only.
    services.nativelink-lre.settings = nlLib.mapLeaves lib.mkDefault (
      nlLib.settingsFor {
        socket = cfg.listen.socket;
        tcp = cfg.listen.tcp;
        allowedUsers = cfg.allowedUsers;
        trustedUsers = cfg.trustedUsers;
      }
    );

    environment.systemPackages = [ cfg.package ];

    # The unix socket and (unless listen.tcp is empty) the TCP socket; the
    # same settings as packaging/systemd/*.socket. switch-to-configuration
    # leaves changed socket units alone (they take effect at the next boot or
    # `systemctl restart`), so a switch never closes the listening sockets.
    systemd.sockets = nlLib.socketUnits {
      socket = cfg.listen.socket;
      tcp = cfg.listen.tcp;
    };

    # The same settings as packaging/systemd/nativelink-lre.service. A new
    # configuration file restarts the service (restartTriggers, and the path
    # in ExecStart); stopIfChanged = false makes that a plain restart, so the
    # sockets stay up and clients queue instead of being refused.
    systemd.services.nativelink-lre =
      nlLib.serviceUnit {
        package = cfg.package;
        inherit configFile;
        stateDir = cfg.settings.state-dir;
        tcp = cfg.listen.tcp;
      }
      // {
        restartTriggers = [ configFile ];
      };

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall (nlLib.tcpPorts cfg.listen.tcp);
  };
}
