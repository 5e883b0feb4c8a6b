#!/bin/sh
# The determinism probe (tests/determinism.rs): prints everything an action
# could depend on, except what nativelink-lre(8) lists as varying on its
# own (times other than the fixed ones, inode and device numbers, link
# counts, mount ids, the per-user daemon's uid in its tmpfs options), so
# that its output is the same byte for byte wherever the action runs.
set -u
section() { printf '== %s\n' "$1"; }

section identity
id
grep -E '^(Uid|Gid|Groups|NoNewPrivs|Seccomp|CapInh|CapPrm|CapEff|CapBnd|CapAmb):' /proc/self/status
section names
hostname
cat /proc/sys/kernel/hostname /proc/sys/kernel/domainname
section umask
umask
section limits
cat /proc/self/limits
section scheduling
echo "nice $(nice)"
grep -E '^(Cpus_allowed_list|Mems_allowed_list):' /proc/self/status
nproc
chrt -p $$ 2>&1 | sed 's/^pid [0-9]*/pid/'
ionice -p $$ 2>&1
cat /proc/self/personality 2>&1
cat /proc/self/timerslack_ns 2>&1
section environment
env | LC_ALL=C sort
section directory
pwd
section cgroup
cat /proc/self/cgroup
section mounts
# Mount ids, parent ids and device numbers are the kernel's counters; a
# per-user daemon's own uid shows in its tmpfs options, and its input files
# are bound read-only onto themselves (source /F on /exec/F: a root
# daemon's are protected by ownership instead; tests/determinism.rs checks
# those binds on their own).
cut -d' ' -f4- /proc/self/mountinfo | sed -E 's/,uid=[0-9]+,gid=[0-9]+//' |
    awk '"/exec" $1 != $2'
section descriptors
# The shell's own (inside $(...), /proc/self/fd/1 would be the pipe).
for fd in 0 1 2; do echo "$fd -> $(readlink /proc/$$/fd/$fd)"; done
section inputs
# Type, mode, owner, size and modification time of every input; change
# and access times, inode numbers and link counts vary on their own.
find . | LC_ALL=C sort | while read -r p; do
    stat -c '%n %F %a %U:%G %s %Y' "$p"
done
section links
# Which input files share an inode (what tar records as hard links).
find . -type f -exec stat -c '%i %n' {} + | LC_ALL=C sort -k2 |
    awk '{ if (!($1 in first)) first[$1] = $2; print $2, "=", first[$1] }'
section tar
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - . | sha256sum
