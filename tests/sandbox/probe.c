/* A static probe that tests/sandbox.rs builds with `gcc -static` and runs
 * as an action. Each attempt runs in a child of its own (a seccomp kill
 * ends only that child) and prints one line:
 *   NAME ABI ok            the call succeeded
 *   NAME ABI errno=N       it failed with errno N
 *   NAME ABI killed=N      the child died of signal N (31 = SIGSYS)
 *
 *   probe syscalls            denied calls natively, via int 0x80 and x32,
 *                             then ordinary calls that must work
 *   probe key-add DESC        add a "user" key DESC to @s and @u
 *   probe key-find DESC       look for DESC in @s and @u, print its payload
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define X32 0x40000000L
#define AF_VSOCK_ 40
#define CLONE_NEWUSER_ 0x10000000L
#define KEYCTL_GET_KEYRING_ID 0
#define KEYCTL_SEARCH 10
#define KEYCTL_READ 11
#define KEY_SPEC_SESSION -3L
#define KEY_SPEC_USER -4L

/* Below 4 GiB in a static non-PIE binary, so that the i386 entry can
 * take their addresses. */
static char params[256];
static unsigned long socketcall_args[3] = {AF_VSOCK_, SOCK_STREAM, 0};

static long int80(long nr, long a, long b, long c, long d, long e) {
    long ret;
    __asm__ volatile("int $0x80"
                     : "=a"(ret)
                     : "a"(nr), "b"(a), "c"(b), "d"(c), "S"(d), "D"(e)
                     : "memory", "r8", "r9", "r10", "r11");
    return ret;
}

/* Runs `call` in a child and reports how it went. */
static void attempt(const char *name, const char *abi, long (*call)(void)) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        long r = call();
        if (r < 0 && r > -4096) /* int 0x80 returns -errno */
            _exit((int)-r);
        if (r < 0)
            _exit(errno ? errno : 255);
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status))
        printf("%s %s killed=%d\n", name, abi, WTERMSIG(status));
    else if (WEXITSTATUS(status) == 0)
        printf("%s %s ok\n", name, abi);
    else
        printf("%s %s errno=%d\n", name, abi, WEXITSTATUS(status));
}

/* syscall(2) returns -1 with errno; turn that into -errno for attempt(). */
#define NATIVE(expr)                         \
    ({                                       \
        long r_ = (expr);                    \
        r_ < 0 ? -(long)errno : r_;          \
    })

static long n_socket(void) { return NATIVE(syscall(SYS_socket, AF_VSOCK_, SOCK_STREAM, 0)); }
static long n_keyctl(void) { return NATIVE(syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION, 1)); }
static long n_unshare(void) { return NATIVE(syscall(SYS_unshare, CLONE_NEWUSER_)); }
static long n_io_uring(void) { return NATIVE(syscall(SYS_io_uring_setup, 1, params)); }
static long n_ptrace(void) { return NATIVE(syscall(SYS_ptrace, 0 /* TRACEME */, 0, 0, 0)); }
static long n_perf(void) {
    memset(params, 0, sizeof params);
    *(unsigned *)(params + 4) = 112; /* attr.size; type 0 = hardware */
    return NATIVE(syscall(SYS_perf_event_open, params, 0, -1, -1, 0));
}
static long n_bpf(void) {
    memset(params, 0, sizeof params);
    unsigned *a = (unsigned *)params; /* BPF_MAP_CREATE: array, 4-byte keys */
    a[0] = 2, a[1] = 4, a[2] = 4, a[3] = 1;
    return NATIVE(syscall(SYS_bpf, 0, params, 64));
}
static long n_inotify(void) { return NATIVE(syscall(SYS_inotify_init1, 0)); }
static long n_mount(void) { return NATIVE(syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, 0)); }
static long n_tiocsti(void) {
    char c = 'x';
    return NATIVE(syscall(SYS_ioctl, 0, 0x5412L /* TIOCSTI */, &c));
}

/* i386 numbers, through the 32-bit entry. */
static long i_socket(void) { return int80(359, AF_VSOCK_, SOCK_STREAM, 0, 0, 0); }
static long i_socketcall(void) { return int80(102, 1 /* SYS_SOCKET */, (long)socketcall_args, 0, 0, 0); }
static long i_keyctl(void) { return int80(288, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION, 1, 0, 0); }
static long i_unshare(void) { return int80(310, CLONE_NEWUSER_, 0, 0, 0, 0); }
static long i_io_uring(void) { return int80(425, 1, (long)params, 0, 0, 0); }
static long i_ptrace(void) { return int80(26, 0, 0, 0, 0, 0); }
static long i_perf(void) { n_perf(); return int80(336, (long)params, 0, -1, -1, 0); }
static long i_bpf(void) { return int80(357, 0, (long)params, 64, 0, 0); }

/* x32 numbers: the native entry with bit 30 set (ptrace is 521 there). */
static long x_socket(void) { return NATIVE(syscall(X32 | SYS_socket, AF_VSOCK_, SOCK_STREAM, 0)); }
static long x_keyctl(void) { return NATIVE(syscall(X32 | SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION, 1)); }
static long x_unshare(void) { return NATIVE(syscall(X32 | SYS_unshare, CLONE_NEWUSER_)); }
static long x_io_uring(void) { return NATIVE(syscall(X32 | SYS_io_uring_setup, 1, params)); }
static long x_ptrace(void) { return NATIVE(syscall(X32 | 521, 0, 0, 0, 0)); }
static long x_perf(void) { n_perf(); return NATIVE(syscall(X32 | SYS_perf_event_open, params, 0, -1, -1, 0)); }
static long x_bpf(void) { return NATIVE(syscall(X32 | SYS_bpf, 0, params, 64)); }

/* Ordinary things that must keep working. */
static long o_unix(void) { return NATIVE(socket(AF_UNIX, SOCK_STREAM, 0)); }
static long o_inet(void) { return NATIVE(socket(AF_INET, SOCK_DGRAM, 0)); }
static long o_inet6(void) { return NATIVE(socket(AF_INET6, SOCK_STREAM, 0)); }
static long o_netlink(void) { return NATIVE(socket(AF_NETLINK, SOCK_RAW, 0)); }
static long o_pair(void) {
    int sv[2];
    return NATIVE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
}
static long o_fork(void) {
    pid_t p = fork();
    if (p == 0)
        _exit(0);
    int st;
    return p < 0 ? -errno : (waitpid(p, &st, 0) == p && WIFEXITED(st) ? 0 : -ECHILD);
}
static void *nothing(void *arg) { return arg; }
static long o_thread(void) {
    pthread_t t;
    int e = pthread_create(&t, NULL, nothing, NULL);
    return e ? -e : -pthread_join(t, NULL);
}

static void syscalls(void) {
    struct { const char *name; long (*n)(void), (*i)(void), (*x)(void); } denied[] = {
        {"socket(AF_VSOCK)", n_socket, i_socket, x_socket},
        {"keyctl", n_keyctl, i_keyctl, x_keyctl},
        {"unshare(CLONE_NEWUSER)", n_unshare, i_unshare, x_unshare},
        {"io_uring_setup", n_io_uring, i_io_uring, x_io_uring},
        {"ptrace(TRACEME)", n_ptrace, i_ptrace, x_ptrace},
        {"perf_event_open", n_perf, i_perf, x_perf},
        {"bpf(MAP_CREATE)", n_bpf, i_bpf, x_bpf},
    };
    for (size_t k = 0; k < sizeof denied / sizeof *denied; k++) {
        attempt(denied[k].name, "native", denied[k].n);
        attempt(denied[k].name, "i386", denied[k].i);
        attempt(denied[k].name, "x32", denied[k].x);
    }
    attempt("socketcall(AF_VSOCK)", "i386", i_socketcall);
    attempt("inotify_init1", "native", n_inotify);
    attempt("mount", "native", n_mount);
    attempt("ioctl(TIOCSTI)", "native", n_tiocsti);
    attempt("socket(AF_UNIX)", "ordinary", o_unix);
    attempt("socket(AF_INET)", "ordinary", o_inet);
    attempt("socket(AF_INET6)", "ordinary", o_inet6);
    attempt("socket(AF_NETLINK)", "ordinary", o_netlink);
    attempt("socketpair(AF_UNIX)", "ordinary", o_pair);
    attempt("fork", "ordinary", o_fork);
    attempt("pthread_create", "ordinary", o_thread);
}

static void key_add(const char *desc) {
    long s = syscall(SYS_add_key, "user", desc, "left-behind", 11, KEY_SPEC_SESSION);
    printf("add @s %s\n", s < 0 ? strerror(errno) : "ok");
    long u = syscall(SYS_add_key, "user", desc, "left-behind", 11, KEY_SPEC_USER);
    printf("add @u %s\n", u < 0 ? strerror(errno) : "ok");
}

static void key_find(const char *desc) {
    long rings[] = {KEY_SPEC_SESSION, KEY_SPEC_USER};
    for (int k = 0; k < 2; k++) {
        long id = syscall(SYS_keyctl, KEYCTL_SEARCH, rings[k], "user", desc, 0);
        if (id < 0) {
            printf("%s absent: %s\n", k ? "@u" : "@s", strerror(errno));
            continue;
        }
        char buf[128] = {0};
        long n = syscall(SYS_keyctl, KEYCTL_READ, id, buf, sizeof buf - 1);
        printf("%s FOUND %s\n", k ? "@u" : "@s", n < 0 ? strerror(errno) : buf);
    }
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* Actions never run as root inside; on a host the attempts would
     * really mount over /tmp and fake terminal input. */
    if (getuid() == 0 || access("/exec", F_OK) != 0) {
        fprintf(stderr, "probe: refusing to run outside a nativelink-lre sandbox\n");
        return 2;
    }
    if (argc == 2 && !strcmp(argv[1], "syscalls"))
        syscalls();
    else if (argc == 3 && !strcmp(argv[1], "key-add"))
        key_add(argv[2]);
    else if (argc == 3 && !strcmp(argv[1], "key-find"))
        key_find(argv[2]);
    else {
        fprintf(stderr, "usage: probe syscalls | key-add DESC | key-find DESC\n");
        return 2;
    }
    return 0;
}
