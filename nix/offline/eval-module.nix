# Test helper for tests/nix.rs, not part of the package or the module.
#
# A stand-in for nixpkgs' lib.evalModules, with a stub `lib` and `pkgs`:
# enough of the module system (options with defaults and simple types, mkIf,
# mkMerge, mkDefault/mkOverride, imports, priorities, list concatenation) to
# evaluate nixos-module/default.nix offline, where nixpkgs is not available.
# It checks the module's glue (option names, what lands in systemd.*, the
# generated settings); the real module system is exercised by the flake's
# checks (config-check, vm), which need nixpkgs.
#
#   import ./eval-module.nix { module = ../nixos-module; userConfig = { ... }; }
#   => { config = <the merged configuration>; options = <option tree>; }
#
# pkgs.formats.toml.generate returns { outPath; name; value; } and
# pkgs.runCommand returns { outPath; name; env; script; }, so tests can see
# what would be built.
{ module, userConfig ? { }, extraPkgs ? { } }:
let
  isTagged = v: builtins.isAttrs v && v ? _type;
  isPlainAttrs = v: builtins.isAttrs v && !(v ? _type) && !(v ? outPath);
  all = f: l: builtins.foldl' (a: x: a && f x) true l;
  unique = l: builtins.foldl' (acc: x: if builtins.elem x acc then acc else acc ++ [ x ]) [ ] l;
  hasPrefix = p: s: builtins.substring 0 (builtins.stringLength p) s == p;

  mkType = name: check: { _type = "type"; inherit name check; };
  types = {
    bool = mkType "bool" builtins.isBool;
    str = mkType "str" builtins.isString;
    path = mkType "path" (v: builtins.isString v && hasPrefix "/" v);
    package = mkType "package" (v: builtins.isAttrs v && v ? outPath);
    anything = mkType "anything" (_: true);
    strMatching = re: mkType "strMatching ${re}" (v: builtins.isString v && builtins.match re v != null);
    listOf = t: mkType "listOf ${t.name}" (v: builtins.isList v && all t.check v);
    attrsOf = t: mkType "attrsOf ${t.name}" (v: builtins.isAttrs v && all t.check (builtins.attrValues v));
    nullOr = t: mkType "null or ${t.name}" (v: v == null || t.check v);
  };

  lib = rec {
    inherit types;
    mkOverride = priority: content: { _type = "override"; inherit priority content; };
    mkDefault = mkOverride 1000;
    mkForce = mkOverride 50;
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    mkMerge = contents: { _type = "merge"; inherit contents; };
    mkOption = args: { _type = "option"; } // args;
    mkEnableOption = name: mkOption { default = false; type = types.bool; description = name; };
    mkPackageOption = pkgs: name: _: mkOption { default = pkgs.${name}; type = types.package; };
    literalExpression = text: { _type = "literalExpression"; inherit text; };
    optional = c: x: if c then [ x ] else [ ];
    optionals = c: l: if c then l else [ ];
    optionalString = c: s: if c then s else "";
    setAttrByPath = path: value: builtins.foldl' (acc: name: { ${name} = acc; }) value (reverseList path);
    reverseList = l: builtins.genList (i: builtins.elemAt l (builtins.length l - 1 - i)) (builtins.length l);
    splitString =
      sep: s: builtins.filter builtins.isString (builtins.split (builtins.replaceStrings [ "." ] [ "\\." ] sep) s);
  };

  pkgs = {
    nativelink-lre = {
      type = "derivation";
      name = "nativelink-lre-stub";
      outPath = "/nix/store/00000000000000000000000000000000-nativelink-lre-stub";
    };
    formats.toml = { }: {
      type = types.anything;
      generate = name: value: { outPath = "/nix/store/generated-${name}"; inherit name value; };
    };
    runCommand = name: env: script: { outPath = "/nix/store/built-${name}"; inherit name env script; };
    stdenv = {
      buildPlatform.canExecute = _: true;
      hostPlatform = { };
    };
  } // extraPkgs;

  # What NixOS itself defines that the module reads.
  nixosDefaults = {
    security.allowUserNamespaces = lib.mkOverride 1500 true;
  };

  args = { inherit lib pkgs config; options = allOptions; };
  load =
    m:
    let
      imported = if builtins.isPath m || builtins.isString m then import m else m;
      r = if builtins.isFunction imported then imported args else imported;
    in
    [ r ] ++ builtins.concatMap load (r.imports or [ ]);
  modules = load module;
  configOf = r: if r ? config || r ? options then r.config or { } else removeAttrs r [ "imports" ];

  # Options: merged trees whose leaves are mkOption results.
  isOption = v: builtins.isAttrs v && (v._type or null) == "option";
  unionTrees =
    trees:
    builtins.zipAttrsWith (
      name: vs: if builtins.length vs == 1 || all isOption vs then builtins.head vs else unionTrees vs
    ) trees;
  allOptions = unionTrees (map (r: r.options or { }) modules);
  optionDefaults =
    tree:
    builtins.mapAttrs (
      _: v:
      if isOption v then (if v ? default then lib.mkOverride 1500 v.default else { }) else optionDefaults v
    ) tree;

  # Definitions: mkIf and mkMerge are pushed down through the declared
  # option namespaces (services.nativelink-lre) without evaluating their
  # conditions, which may depend on `config` itself; as in the real module
  # system, conditions are evaluated where an option, or an undeclared path
  # (systemd.*, assertions, ...) begins. Priorities then pick the definitions
  # that count at each leaf; lists concatenate; attrsets merge key by key.
  expand =
    conds: prio: d:
    if isTagged d && d._type == "merge" then
      builtins.concatMap (expand conds prio) d.contents
    else if isTagged d && d._type == "if" then
      expand (conds ++ [ d.condition ]) prio d.content
    else if isTagged d && d._type == "override" then
      expand conds d.priority d.content
    else
      [ { inherit conds prio; value = d; } ];

  rewrap = e: value: {
    _type = "if";
    condition = all (c: c) e.conds;
    content = lib.mkOverride e.prio value;
  };

  merge =
    # optTree: the declared options below `loc`, or null outside them.
    optTree: loc: defs:
    let
      entries = builtins.concatMap (expand [ ] 100) defs;
      intermediate = optTree != null && !(isOption optTree);
      considered = if intermediate then entries else builtins.filter (e: all (c: c) e.conds) entries;
      allAttrs = considered != [ ] && all (e: isPlainAttrs e.value) considered;
    in
    if intermediate || allAttrs then
      let
        names = unique (builtins.concatMap (e: builtins.attrNames e.value) considered);
        child =
          name:
          merge (if intermediate && optTree ? ${name} then optTree.${name} else null) (loc ++ [ name ]) (
            map (e: rewrap e e.value.${name}) (builtins.filter (e: e.value ? ${name}) considered)
          );
      in
      builtins.listToAttrs (map (name: { inherit name; value = child name; }) names)
    else
      let
        best = builtins.foldl' (m: e: if e.prio < m then e.prio else m) 10000 considered;
        values = map (e: e.value) (builtins.filter (e: e.prio == best) considered);
        where = builtins.concatStringsSep "." loc;
      in
      if considered == [ ] then
        absent
      else if all builtins.isList values then
        builtins.concatLists values
      else if builtins.length (unique values) == 1 then
        builtins.head values
      else
        throw "conflicting definitions for ${where}: ${builtins.toJSON values}";

  absent = { _type = "absent"; };
  isAbsent = v: builtins.isAttrs v && (v._type or null) == "absent";

  config = merge allOptions [ ] (
    [ (optionDefaults allOptions) nixosDefaults ] ++ map configOf modules ++ [ userConfig ]
  );

  # The configuration without the leaves that got no value (and without the
  # attrsets that had only such leaves).
  clean =
    v:
    if isPlainAttrs v then
      let
        kept = builtins.removeAttrs v (builtins.filter (n: isAbsent v.${n}) (builtins.attrNames v));
        cleaned = builtins.mapAttrs (_: clean) kept;
      in
      builtins.removeAttrs cleaned (
        builtins.filter (n: isPlainAttrs kept.${n} && kept.${n} != { } && cleaned.${n} == { }) (builtins.attrNames cleaned)
      )
    else
      v;

  # Every option's value must pass its type's check.
  typeErrors =
    prefix: tree:
    builtins.concatLists (
      builtins.attrValues (
        builtins.mapAttrs (
          name: v:
          let
            path = prefix ++ [ name ];
            where = builtins.concatStringsSep "." path;
            value = builtins.foldl' (
              acc: n: if acc != null && acc ? ${n} && !(isAbsent acc.${n}) then acc.${n} else null
            ) config path;
          in
          if isOption v then
            (if v ? type && value != null && !(v.type.check value) then [ "${where}: not a ${v.type.name}" ] else [ ])
          else
            typeErrors path v
        ) tree
      )
    );
  errors = typeErrors [ ] allOptions;
in
if errors != [ ] then throw (builtins.concatStringsSep "\n" errors) else { config = clean config; options = allOptions; }
