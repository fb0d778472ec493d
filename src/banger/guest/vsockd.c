/* banger vsockd: the guest end of banger's control channel on Firecracker.
 *
 * Firecracker has no virtio-serial; its host <-> guest channel is vsock (the host side is a Unix
 * socket speaking `CONNECT <port>`). busybox cannot listen on AF_VSOCK, so this helper does:
 *
 *     vsockd PORT CMD [ARG...]
 *
 * listens on AF_VSOCK VMADDR_CID_ANY:PORT and, for every connection, forks and execs CMD with
 * the connection as its stdin and stdout (the payload passes `busybox sh /.banger/ctl.sh MODE`,
 * the same protocol handler the virtio-serial agent runs). Children are reaped by the kernel
 * (SIGCHLD ignored). Built by the daemon with `gcc -static -Os` (see vsockd.py).
 *
 * Built with -DVSOCKD_UNIX, PORT is a filesystem path and the listener is AF_UNIX: the same code
 * path, testable on a host without vsock.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#ifdef VSOCKD_UNIX
#include <sys/un.h>
#else
#include <linux/vm_sockets.h>
#endif

static int listen_on(const char *where) {
#ifdef VSOCKD_UNIX
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(where) >= sizeof addr.sun_path) {
        fprintf(stderr, "banger-vsockd: socket path too long: %s\n", where);
        return -1;
    }
    strcpy(addr.sun_path, where);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
#else
    char *end = NULL;
    errno = 0;
    unsigned long port = strtoul(where, &end, 10);
    if (errno || !end || *end || end == where || port == 0 || port > 0xfffffffeUL) {
        fprintf(stderr, "banger-vsockd: invalid vsock port %s\n", where);
        return -1;
    }
    struct sockaddr_vm addr = {
        .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = (unsigned int)port};
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
#endif
    if (fd < 0) {
        fprintf(stderr, "banger-vsockd: socket: %s\n", strerror(errno));
        return -1;
    }
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(fd, 16) < 0) {
        fprintf(stderr, "banger-vsockd: cannot listen on %s: %s\n", where, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: vsockd PORT CMD [ARG...]\n");
        return 2;
    }
    int lfd = listen_on(argv[1]);
    if (lfd < 0)
        return 1;
    signal(SIGCHLD, SIG_IGN); /* no zombies: the kernel reaps handlers */
    signal(SIGPIPE, SIG_IGN);
    fprintf(stderr, "banger-vsockd: listening on %s %s\n",
#ifdef VSOCKD_UNIX
            "unix socket",
#else
            "vsock port",
#endif
            argv[1]);
    for (;;) {
        int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            fprintf(stderr, "banger-vsockd: accept: %s\n", strerror(errno));
            sleep(1); /* EMFILE and the like: back off instead of spinning */
            continue;
        }
        pid_t pid = fork();
        if (pid == 0) {
            signal(SIGCHLD, SIG_DFL);
            signal(SIGPIPE, SIG_DFL);
            if (dup2(c, 0) < 0 || dup2(c, 1) < 0)
                _exit(127);
            execv(argv[2], argv + 2);
            fprintf(stderr, "banger-vsockd: exec %s: %s\n", argv[2], strerror(errno));
            _exit(127);
        }
        if (pid < 0)
            fprintf(stderr, "banger-vsockd: fork: %s\n", strerror(errno));
        close(c);
    }
}
