# NixOS module for nativelink-lre: a local Bazel Remote Execution API v2
# service (shared CAS, action cache, hermetic execution), socket-activated.
#
#   services.nativelink-lre = {
#     enable = true;
#     settings.trusted-users = [ "root" "@wheel" ];
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

  listen = nlLib.listenOf cfg.settings;
  stateDir = cfg.settings.state-dir;

  # Options of earlier versions that shadowed keys of `settings` (as
  # nix.trustedUsers shadowed nix.settings.trusted-users): each is now an
  # alias of its key, null unless set, with a warning when it is.
  # (lib.mkRenamedOptionModule cannot point into a freeform `settings`: it
  # takes the type of the target option, which does not exist.)
  aliases = [
    {
      old = "allowedUsers";
      key = "allowed-users";
      value = cfg.allowedUsers;
    }
    {
      old = "trustedUsers";
      key = "trusted-users";
      value = cfg.trustedUsers;
    }
    {
      old = "listen.socket";
      key = "listen.unix";
      value = cfg.listen.socket;
    }
    {
      old = "listen.tcp";
      key = "listen.tcp";
      value = cfg.listen.tcp;
    }
  ];
  aliasOption =
    key: type:
    lib.mkOption {
      type = lib.types.nullOr type;
      default = null;
      visible = false;
      description = "Alias of `services.nativelink-lre.settings.${key}`.";
    };
  used = builtins.filter (a: a.value != null) aliases;
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
        there.

        The socket units are made from `listen.unix`, `listen.unix-mode` and
        `listen.tcp` (`unix = ""` and `tcp = [ ]` drop a unit), so what the
        daemon is told and what systemd listens on are the same. A
        `state-dir` outside {file}`/var/lib` is created by systemd-tmpfiles.
        The file is also installed as {file}`/etc/nativelink-lre/config.toml`,
        where the admin commands (`nativelink-lre status`, `doctor`, ...)
        find the socket.
      '';
      example = lib.literalExpression ''
        {
          trusted-users = [ "root" "@wheel" ];
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

    allowedUsers = aliasOption "allowed-users" (lib.types.listOf lib.types.str);
    trustedUsers = aliasOption "trusted-users" (lib.types.listOf lib.types.str);
    listen.socket = aliasOption "listen.unix" lib.types.str;
    listen.tcp = aliasOption "listen.tcp" (lib.types.listOf lib.types.str);

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Open the ports of `settings.listen.tcp` in the firewall. This has no effect
        today: the daemon listens on loopback only, which the NixOS firewall
        always accepts. It would matter only with a non-loopback address in
        `settings.listen.tcp`, which the daemon refuses (callers cannot be identified
        there); a warning says so when this is set.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions =
      map (message: {
        assertion = false;
        message = "services.nativelink-lre.${message}";
      }) (nlLib.listenProblems listen)
      ++ [
      {
        assertion = config.security.allowUserNamespaces;
        message = ''
          services.nativelink-lre runs every action in user, mount and pid
          namespaces; it needs security.allowUserNamespaces = true.
        '';
      }
    ];

    warnings =
      lib.optional cfg.openFirewall ''
        services.nativelink-lre.openFirewall has no effect: the daemon listens on
        loopback only, and the firewall always accepts loopback traffic. Other
        machines cannot use this service.
      ''
      ++ map (
        a:
        "services.nativelink-lre.${a.old} is an alias of services.nativelink-lre.settings.${a.key}; set that instead."
      ) used;

    # The daemon's defaults, at mkDefault priority, leaf by leaf: a user's
    # `settings.store.max-size = "50GiB"` replaces that key only. Then the
    # aliases that are set, as if the key itself were.
    services.nativelink-lre.settings = lib.mkMerge (
      [ (nlLib.mapLeaves lib.mkDefault nlLib.defaultSettings) ]
      ++ map (a: lib.setAttrByPath (lib.splitString "." a.key) a.value) used
    );

    environment.systemPackages = [ cfg.package ];

    # For the admin commands, which read it to find the system daemon.
    environment.etc."nativelink-lre/config.toml".source = configFile;

    # The unix socket (unless settings.listen.unix is "") and the TCP socket
    # (unless settings.listen.tcp is empty), from the same values the daemon
    # gets; the same settings as packaging/systemd/*.socket.
    # switch-to-configuration leaves changed socket units alone (they take
    # effect at the next boot or `systemctl restart`), so a switch never
    # closes the listening sockets.
    systemd.sockets = nlLib.socketUnits listen;

    # A state-dir outside /var/lib (no StateDirectory=) must exist before the
    # unit's ReadWritePaths= can name it.
    systemd.tmpfiles.rules = nlLib.stateTmpfiles stateDir;

    # The same settings as packaging/systemd/nativelink-lre.service. A new
    # configuration file restarts the service (restartTriggers, and the path
    # in ExecStart); stopIfChanged = false makes that a plain restart, so the
    # sockets stay up and clients queue instead of being refused.
    systemd.services.nativelink-lre =
      nlLib.serviceUnit {
        package = cfg.package;
        inherit configFile;
        inherit (cfg) settings;
      }
      // {
        restartTriggers = [ configFile ];
      };

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall (nlLib.tcpPorts listen.tcp);
  };
}
