{
  description = "nativelink-lre: a local Bazel Remote Execution API v2 service (shared CAS, action cache, hermetic execution)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      # builtins only (no nixpkgs.lib), so that tests/nix.rs can list the
      # outputs offline with a stub nixpkgs.
      forAllSystems =
        f:
        builtins.listToAttrs (
          map (system: {
            name = system;
            value = f system;
          }) systems
        );
      pkgsFor =
        system:
        import nixpkgs {
          inherit system;
          overlays = [ self.overlays.default ];
        };
    in
    {
      overlays.default = final: prev: {
        nativelink-lre = final.callPackage ./nix/package.nix { };
      };

      packages = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
        in
        {
          default = pkgs.nativelink-lre;
          nativelink-lre = pkgs.nativelink-lre;
        }
      );

      # The module takes its package from pkgs.nativelink-lre (the overlay
      # above); without the overlay it builds this flake's source with the
      # system's own nixpkgs.
      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./nixos-module ];
          services.nativelink-lre.package = lib.mkDefault (
            pkgs.nativelink-lre or (pkgs.callPackage ./nix/package.nix { })
          );
        };
      nixosModules.nativelink-lre = self.nixosModules.default;

      devShells = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
        in
        {
          default = pkgs.mkShell {
            packages = [
              pkgs.cargo
              pkgs.rustc
              pkgs.rustfmt
              pkgs.clippy
              pkgs.cargo-nextest
              pkgs.rust-analyzer
              pkgs.mandoc # tests/run lints the man pages
              pkgs.nix # tests/nix.rs runs nix-instantiate
            ];
            RUST_SRC_PATH = "${pkgs.rustPlatform.rustLibSrc}";
          };
        }
      );

      checks = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
          args = {
            inherit pkgs;
            nixosModule = self.nixosModules.default;
            package = pkgs.nativelink-lre;
          };
        in
        {
          package = pkgs.nativelink-lre;
          config-check = import ./nix/config-check.nix args;
          vm = import ./nix/vm-test.nix args;
        }
      );

      templates.default = {
        path = ./templates/default;
        description = "A Bazel project that builds and runs its actions on the local nativelink-lre service, with its toolchain pinned through the Nix store";
        welcomeText = ''
          Enable the service on NixOS (`services.nativelink-lre.enable = true;`
          from this flake's nixosModules.default), then run `nix develop` and
          `bazel build //...`. See README.md.
        '';
      };
    };
}
