/* Test-only vsock client for the guest: vsock_probe CID PORT LINE...
 * Connects, sends each LINE + "\n", half-closes, copies the answer to stdout until EOF. */
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    struct sockaddr_vm a = {.svm_family = AF_VSOCK,
                            .svm_cid = (unsigned int)strtoul(argv[1], NULL, 10),
                            .svm_port = (unsigned int)strtoul(argv[2], NULL, 10)};
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("vsock_probe: connect");
        return 1;
    }
    for (int i = 3; i < argc; i++) {
        if (write(fd, argv[i], strlen(argv[i])) < 0 || write(fd, "\n", 1) < 0)
            return 1;
    }
    shutdown(fd, SHUT_WR);
    char buf[512];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        if (write(1, buf, (size_t)n) < 0)
            return 1;
    return n < 0;
}
