# The pure logic of the NixOS module (./default.nix): the daemon's default
# settings, the settings derived from the module's options, and the systemd
# units. It uses builtins only -- no nixpkgs `lib` -- so that tests/nix.rs can
# evaluate it offline with a bare `nix-instantiate --eval --strict --json`:
#
#   nix-instantiate --eval --strict --json -E \
#     '(import ./nixos-module/lib.nix).settingsFor { trustedUsers = [ "root" "@wheel" ]; }'
#
# Keep `defaultSettings` in step with the `Default` impls in src/config.rs;
# tests/nix.rs parses these defaults with the daemon's own Config and compares.
let
  # builtins only: small stand-ins for the nixpkgs lib functions we need.
  isLeaf = v: !(builtins.isAttrs v);

  # Like lib.recursiveUpdate: `right` wins, attrsets are merged key by key,
  # everything else (lists included) is replaced whole.
  recursiveUpdate =
    left: right:
    left
    // builtins.mapAttrs (
      name: value:
      if builtins.hasAttr name left && builtins.isAttrs left.${name} && builtins.isAttrs value then
        recursiveUpdate left.${name} value
      else
        value
    ) right;

  # Applies `f` to every leaf (non-attrset value) of a nested attrset.
  mapLeaves = f: attrs: builtins.mapAttrs (_: v: if isLeaf v then f v else mapLeaves f v) attrs;

  hasPrefix = prefix: s: builtins.substring 0 (builtins.stringLength prefix) s == prefix;

  removePrefix =
    prefix: s:
    if hasPrefix prefix s then
      builtins.substring (builtins.stringLength prefix) (builtins.stringLength s) s
    else
      s;

  # The port of "127.0.0.1:50051" or "[::1]:50051".
  portOf =
    addr:
    let
      m = builtins.match ".*:([0-9]+)" addr;
    in
    if m == null then throw "nativelink-lre: ${addr} has no :port" else builtins.fromJSON (builtins.head m);

  # The daemon accepts loopback addresses only: 127.0.0.0/8 and ::1.
  isLoopback =
    addr:
    builtins.match "127\\.[0-9]+\\.[0-9]+\\.[0-9]+:[0-9]+" addr != null
    || builtins.match "[[](::1|0:0:0:0:0:0:0:1)[]]:[0-9]+" addr != null;

  # The option defaults of the module, in one place.
  optionDefaults = {
    socket = "/run/nativelink-lre/socket";
    tcp = [ "127.0.0.1:50051" ];
    allowedUsers = [ "*" ];
    trustedUsers = [ "root" ];
  };

  # The daemon's built-in defaults (src/config.rs) as they apply to the
  # system service run by root, except where NixOS differs on purpose:
  #   - sandbox.read-only-paths: the built-in list adds /usr /bin /lib /lib64
  #     on hosts that are not NixOS; on NixOS every tool an action can use is
  #     in the store, so the store is all it sees.
  #   - execution.platform is left out: the daemon's built-in value names the
  #     machine's ISA, which it knows better than an evaluation does. Setting
  #     it replaces the whole map.
  # Floats are avoided (cgroup.cpu-max = 0): Nix versions print 0.0 as "0" or
  # "0.0", and the daemon accepts an integer there either way.
  defaultSettings = {
    state-dir = "/var/lib/nativelink-lre";
    instance-names = [ "" ];
    allowed-users = optionDefaults.allowedUsers;
    trusted-users = optionDefaults.trustedUsers;
    untrusted-action-cache-writes = "private";
    idle-timeout = "10m";
    log-level = "info";
    listen = {
      # Ignored under socket activation (the socket units below decide), but
      # kept equal to them so that `nativelink-lre check-config` validates the
      # addresses and a manual `nativelink-lre --config` binds the same ones.
      unix = optionDefaults.socket;
      unix-mode = "0666";
      tcp = optionDefaults.tcp;
    };
    store = {
      max-size = "10GiB";
      high-watermark = 90;
      low-watermark = 80;
      fsync = false;
      max-batch-size = "4MiB";
    };
    action-cache = {
      inline-max-size = "1MiB";
    };
    execution = {
      enabled = true;
      # 0: one action per core.
      max-concurrent-actions = 0;
      default-timeout = "15m";
      max-timeout = "3h";
      kill-grace = "2s";
    };
    sandbox = {
      read-only-paths = [ "/nix/store" ];
      tmp-size = "1GiB";
      # 0x70000000: far above the uids and subuid ranges NixOS hands out.
      uid-range-start = 1879048192;
      uid-range-count = 65536;
      allow-host-network = false;
    };
    cgroup = {
      # 0: no limit.
      memory-max = 0;
      swap-max = 0;
      pids-max = 0;
      cpu-max = 0;
      require-controllers = false;
    };
  };

  # The keys that the module's own options write.
  optionSettings =
    {
      socket ? optionDefaults.socket,
      tcp ? optionDefaults.tcp,
      allowedUsers ? optionDefaults.allowedUsers,
      trustedUsers ? optionDefaults.trustedUsers,
    }:
    {
      allowed-users = allowedUsers;
      trusted-users = trustedUsers;
      listen = {
        unix = socket;
        inherit tcp;
      };
    };

  # The final settings, as the module computes them: the defaults, then the
  # options, then the user's `settings`, each key overriding the one before.
  # (The module does the same with mkDefault, so `settings.trusted-users`
  # overrides `trustedUsers`.)
  settingsFor =
    args@{
      settings ? { },
      ...
    }:
    recursiveUpdate (recursiveUpdate defaultSettings (optionSettings (
      builtins.removeAttrs args [ "settings" ]
    ))) settings;

  # systemd's StateDirectory= wants a path relative to /var/lib; a state-dir
  # elsewhere is made writable with ReadWritePaths= instead (ProtectSystem=strict).
  stateDirectoryConfig =
    stateDir:
    if hasPrefix "/var/lib/" stateDir then
      { StateDirectory = removePrefix "/var/lib/" stateDir; }
    else
      {
        StateDirectory = "nativelink-lre";
        ReadWritePaths = [ stateDir ];
      };

  # The units below carry the same settings as packaging/systemd/*; the
  # reasons for each are given there. tests/nix.rs compares them key by key.

  # systemd.sockets.*: the unix socket and, unless `tcp` is empty, one TCP
  # socket unit. Two units because FileDescriptorName= is per unit and the
  # daemon tells its sockets apart by these names (LISTEN_FDNAMES).
  socketUnits =
    {
      socket ? optionDefaults.socket,
      tcp ? optionDefaults.tcp,
    }:
    {
      nativelink-lre = {
        description = "nativelink-lre REAPI v2 service (unix socket)";
        documentation = [ "man:nativelink-lre(8)" ];
        wantedBy = [ "sockets.target" ];
        listenStreams = [ socket ];
        socketConfig = {
          # Everyone may connect; the daemon decides with allowed-users.
          SocketMode = "0666";
          FileDescriptorName = "unix";
          Accept = false;
          Service = "nativelink-lre.service";
        };
      };
    }
    // (
      if tcp == [ ] then
        { }
      else
        {
          nativelink-lre-tcp = {
            description = "nativelink-lre REAPI v2 service (loopback TCP)";
            documentation = [ "man:nativelink-lre(8)" ];
            wantedBy = [ "sockets.target" ];
            listenStreams = tcp;
            socketConfig = {
              FileDescriptorName = "tcp";
              Accept = false;
              NoDelay = true;
              Service = "nativelink-lre.service";
            };
          };
        }
    );

  # systemd.services.nativelink-lre, without restartTriggers (the module adds
  # the config file there). `package` and `configFile` are store paths (or
  # anything that interpolates to one). No wantedBy: the sockets start it.
  serviceUnit =
    {
      package,
      configFile,
      stateDir ? defaultSettings.state-dir,
      tcp ? optionDefaults.tcp,
    }:
    let
      sockets = [ "nativelink-lre.socket" ] ++ (if tcp == [ ] then [ ] else [ "nativelink-lre-tcp.socket" ]);
    in
    {
      description = "nativelink-lre local REAPI v2 cache and execution service";
      documentation = [
        "man:nativelink-lre(8)"
        "man:nativelink-lre.toml(5)"
      ];
      requires = sockets;
      after = sockets;
      # On a configuration switch, restart the service in one step instead of
      # stopping service and sockets: the sockets keep listening, and clients
      # that connect meanwhile wait in the backlog.
      stopIfChanged = false;
      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${package}/bin/nativelink-lre --config ${configFile}";
        WatchdogSec = "30s";
        # An idle exit is status 0: not restarted, the sockets start it again.
        Restart = "on-failure";
        RestartSec = "1s";
        TimeoutStopSec = "60s";
        # Connections, uploads and actions all cost descriptors (see
        # packaging/systemd/nativelink-lre.service).
        LimitNOFILE = 65536;
        # The daemon gives every action a leaf cgroup with its own limits.
        Delegate = true;
        KillMode = "control-group";
        # One action's OOM kill must not stop the service.
        OOMPolicy = "continue";

        # Hardening. Left out because they break the sandbox or the actions
        # (see packaging/systemd/nativelink-lre.service): PrivateUsers=,
        # DynamicUser=, RestrictNamespaces=, ProtectControlGroups=,
        # ProtectKernelTunables=, ProtectKernelLogs=, ProtectHostname=,
        # ProtectProc=, ProcSubset=, MemoryDenyWriteExecute=,
        # SystemCallArchitectures=, PrivateNetwork=, IPAddressDeny=.
        CapabilityBoundingSet = "CAP_SETUID CAP_SETGID CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE CAP_KILL";
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelModules = true;
        ProtectClock = true;
        LockPersonality = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        RestrictAddressFamilies = "AF_UNIX AF_INET AF_INET6 AF_NETLINK";
        SystemCallFilter = "~@obsolete @reboot @swap";
        SystemCallErrorNumber = "EPERM";
      }
      // stateDirectoryConfig stateDir;
    };

  # networking.firewall.allowedTCPPorts for openFirewall.
  tcpPorts = tcp: map portOf tcp;

  # Addresses the daemon would refuse (it identifies callers on loopback only).
  nonLoopback = tcp: builtins.filter (a: !(isLoopback a)) tcp;
in
{
  inherit
    recursiveUpdate
    mapLeaves
    isLoopback
    portOf
    optionDefaults
    defaultSettings
    optionSettings
    settingsFor
    stateDirectoryConfig
    socketUnits
    serviceUnit
    tcpPorts
    nonLoopback
    ;
}
