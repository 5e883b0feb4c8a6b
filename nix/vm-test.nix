# NixOS VM test (flake output checks.<system>.vm): the module's units, socket
# activation over the unix socket and loopback TCP, a real action through a
# REAPI client (./vm-client.py: upload Command and Action, Execute, read the
# outputs back), the sandbox's view of the file system, and a memory hog
# killed by the per-action cgroup limit.
{
  pkgs,
  nixosModule,
  package,
}:
let
  client = pkgs.writeShellScriptBin "lre-client" ''
    exec ${pkgs.python3.withPackages (ps: [ ps.grpcio ])}/bin/python3 ${./vm-client.py} "$@"
  '';
  # Actions see only /nix/store, so they name their tools by store path.
  bash = "${pkgs.bash}/bin/bash";
  python = "${pkgs.python3}/bin/python3";
in
pkgs.testers.runNixOSTest {
  name = "nativelink-lre";

  nodes.machine =
    { ... }:
    {
      imports = [ nixosModule ];
      services.nativelink-lre = {
        enable = true;
        inherit package;
        settings.trusted-users = [
          "root"
          "@wheel"
        ];
        settings.cgroup = {
          memory-max = "64MiB";
          # Fail the start instead of running without the limit we test.
          require-controllers = true;
        };
      };
      users.users.alice.isNormalUser = true;
      virtualisation.memorySize = 1536;
      # The tools the actions run must be in the VM's store.
      environment.systemPackages = [
        client
        pkgs.bash
        pkgs.python3
      ];
    };

  testScript = ''
    import json
    import shlex

    def run(*argv, flags="", user=None):
        cmd = f"lre-client run {flags} -- " + " ".join(shlex.quote(a) for a in argv)
        if user:
            cmd = f"su - {user} -c {shlex.quote(cmd)}"
        result = json.loads(machine.succeed(cmd))
        machine.log(json.dumps(result, indent=2))
        return result

    machine.wait_for_unit("sockets.target")
    machine.wait_for_unit("nativelink-lre.socket")
    machine.wait_for_unit("nativelink-lre-tcp.socket")

    with subtest("socket activation: nothing runs before the first connection"):
        machine.succeed("test -S /run/nativelink-lre/socket")
        machine.fail("systemctl is-active --quiet nativelink-lre.service")

    with subtest("the checked configuration is the one in use"):
        exec_start = machine.succeed("systemctl show -P ExecStart nativelink-lre.service")
        config = exec_start.split("--config ")[1].split()[0]
        assert config.startswith("/nix/store/"), exec_start
        machine.succeed(f"nativelink-lre check-config {config}")
        machine.succeed(f"grep -F 'memory-max = \"64MiB\"' {config}")
        machine.succeed(f"grep -F '/nix/store' {config}")

    with subtest("both sockets serve, and the first connection starts the service"):
        caps = json.loads(machine.succeed("lre-client --target unix:///run/nativelink-lre/socket capabilities"))
        assert caps["exec_enabled"], caps
        machine.wait_for_unit("nativelink-lre.service")
        machine.wait_for_open_port(50051)
        caps = json.loads(machine.succeed("lre-client --target 127.0.0.1:50051 capabilities"))
        assert caps["exec_enabled"], caps

    with subtest("an action runs in the sandbox and its outputs come back"):
        r = run(
            "${bash}", "-c",
            "echo hello from the sandbox; echo out > result.txt; "
            "test -d /nix/store && test ! -e /var/lib/nativelink-lre "
            "&& test ! -e /run/nativelink-lre && test ! -e /home",
            flags="--output result.txt",
        )
        assert r["status"]["code"] == 0, r
        assert r["exit_code"] == 0, r
        assert r["stdout"] == "hello from the sandbox\n", r
        assert r["output_files"] == {"result.txt": "out\n"}, r

    with subtest("an ordinary user can run actions too"):
        r = run("${bash}", "-c", "echo hi", user="alice")
        assert r["status"]["code"] == 0 and r["exit_code"] == 0 and r["stdout"] == "hi\n", r

    with subtest("the cgroup limit kills a memory hog"):
        small = run("${python}", "-c", "x = b'x' * (16 << 20); print(len(x))")
        assert small["status"]["code"] == 0 and small["exit_code"] == 0, small
        hog = run("${python}", "-c", "x = b'x' * (512 << 20); print(len(x))")
        assert hog["status"]["code"] == 0, hog
        assert hog["exit_code"] != 0, hog
        assert str(512 << 20) not in hog["stdout"], hog
        usage = hog.get("resource_usage")
        if usage and usage["source"] == "cgroup" and usage["oom_kills"] is not None:
            assert usage["oom_kills"] >= 1, hog
        machine.succeed("systemctl is-active --quiet nativelink-lre.service")

    with subtest("the sockets outlive the service"):
        machine.succeed("systemctl stop nativelink-lre.service")
        machine.succeed("systemctl is-active --quiet nativelink-lre.socket nativelink-lre-tcp.socket")
        r = run("${bash}", "-c", "echo again")
        assert r["exit_code"] == 0 and r["stdout"] == "again\n", r
        machine.wait_for_unit("nativelink-lre.service")
  '';
}
