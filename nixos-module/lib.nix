# The pure logic of the NixOS module (./default.nix): the daemon's default
# settings, the settings derived from the module's options, and the systemd
# units. It uses builtins only -- no nixpkgs `lib` -- so that tests/nix.rs can
# evaluate it offline with a bare `nix-instantiate --eval --strict --json`:
#
#   nix-instantiate --eval --strict --json -E \
#     '(import ./nixos-module/lib.nix).settingsFor { settings.trusted-users = [ "root" "@wheel" ]; }'
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
    allowed-users = [ "*" ];
    trusted-users = [ "root" ];
    untrusted-action-cache-writes = "private";
    idle-timeout = "10m";
    log-level = "info";
    listen = {
      # The socket units below are made from these values, so the daemon
      # (which takes its sockets from systemd) and `check-config` agree.
      # unix = "" means no unix socket; tcp = [ ] no TCP socket unit.
      unix = "/run/nativelink-lre/socket";
      unix-mode = "0666";
      tcp = [ "127.0.0.1:50051" ];
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
      unenforceable-limits = "warn";
    };
  };

  # The final settings, as the module computes them: the defaults, then the
  # user's `settings`, key by key. (The module does the same with
  # mkDefault.)
  settingsFor =
    {
      settings ? { },
    }:
    recursiveUpdate defaultSettings settings;

  # What the settings listen on, with the defaults filled in.
  listenOf =
    settings:
    let
      l = (settingsFor { inherit settings; }).listen;
    in
    {
      unix = l.unix;
      unixMode = l.unix-mode;
      tcp = l.tcp;
    };

  # Why the socket units could not be made from `listen` (listenOf), for the
  # module's assertions; empty when they can.
  listenProblems =
    listen:
    let
      bad = nonLoopback listen.tcp;
    in
    (if bad == [ ] then
      [ ]
    else
      [
        "settings.listen.tcp: ${builtins.concatStringsSep ", " bad}: only loopback addresses (127.0.0.0/8, [::1]) with a port are allowed; nativelink-lre identifies callers only on loopback."
      ])
    ++ (if listen.unix == "" || hasPrefix "/" listen.unix then
      [ ]
    else
      [ "settings.listen.unix: ${listen.unix} is not an absolute path (\"\" means no unix socket)." ])
    ++ (if listen.unix == "" && listen.tcp == [ ] then
      [ "settings.listen: neither a unix socket nor a TCP address is left, so nothing could reach the service." ]
    else
      [ ]);

  # systemd's StateDirectory= wants a path relative to /var/lib; a state-dir
  # elsewhere is made writable with ReadWritePaths= instead (ProtectSystem=strict),
  # and created by systemd-tmpfiles (stateTmpfiles): ReadWritePaths= of a
  # path that does not exist stops the service from starting.
  underVarLib = stateDir: hasPrefix "/var/lib/" stateDir;

  stateDirectoryConfig =
    stateDir:
    if underVarLib stateDir then
      { StateDirectory = removePrefix "/var/lib/" stateDir; }
    else
      { ReadWritePaths = [ stateDir ]; };

  # systemd.tmpfiles.rules for a state-dir outside /var/lib: the directory,
  # root's, mode 0755 (as the daemon makes it), never cleaned by age.
  stateTmpfiles =
    stateDir: if underVarLib stateDir then [ ] else [ "d ${stateDir} 0755 root root - -" ];

  # The units below carry the same settings as packaging/systemd/*; the
  # reasons for each are given there. tests/nix.rs compares them key by key.

  # systemd.sockets.*: the unix socket and, unless `tcp` is empty, one TCP
  # socket unit. Two units because FileDescriptorName= is per unit and the
  # daemon tells its sockets apart by these names (LISTEN_FDNAMES).
  socketUnits =
    listen:
    (
      if listen.unix == "" then
        { }
      else
        {
          nativelink-lre = {
            description = "nativelink-lre REAPI v2 service (unix socket)";
            documentation = [ "man:nativelink-lre(8)" ];
            wantedBy = [ "sockets.target" ];
            listenStreams = [ listen.unix ];
            socketConfig = {
              # settings.listen.unix-mode, 0666 by default: everyone may
              # connect, and the daemon decides with allowed-users.
              SocketMode = listen.unixMode;
              FileDescriptorName = "unix";
              Accept = false;
              Service = "nativelink-lre.service";
            };
          };
        }
    )
    // (
      if listen.tcp == [ ] then
        { }
      else
        {
          nativelink-lre-tcp = {
            description = "nativelink-lre REAPI v2 service (loopback TCP)";
            documentation = [ "man:nativelink-lre(8)" ];
            wantedBy = [ "sockets.target" ];
            listenStreams = listen.tcp;
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
      settings ? { },
    }:
    let
      listen = listenOf settings;
      stateDir = (settingsFor { inherit settings; }).state-dir;
      sockets =
        (if listen.unix == "" then [ ] else [ "nativelink-lre.socket" ])
        ++ (if listen.tcp == [ ] then [ ] else [ "nativelink-lre-tcp.socket" ]);
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
    defaultSettings
    settingsFor
    listenOf
    listenProblems
    underVarLib
    stateDirectoryConfig
    stateTmpfiles
    socketUnits
    serviceUnit
    tcpPorts
    nonLoopback
    ;
}
