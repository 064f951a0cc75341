/* A local user racing a daemon that binds in a directory this user owns.
 *
 * Run as that user (tests/test_bind.py runs it as nobody).  Each mode loops
 * for the given number of seconds as fast as it can and then prints
 * "iterations N hits M" on stdout:
 *
 *   swapdir DIR A B SECONDS        renameat2(RENAME_EXCHANGE) DIR/A <-> DIR/B;
 *                                   hits: exchanges done
 *   plantlink DIR NAME TARGET SEC  whenever DIR/NAME is a socket, replace it with a
 *                                   symbolic link to TARGET (rename over it); remove
 *                                   the link 5 ms later so the daemon can bind again;
 *                                   hits: links planted over a socket
 *   sendto PATH SECONDS            datagrams to PATH; hits: datagrams accepted
 *   connect PATH SECONDS           stream connects to PATH; hits: connections made
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1) /* linux/fs.h */
#endif

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void address(struct sockaddr_un *sun, const char *path) {
    memset(sun, 0, sizeof *sun);
    sun->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sun->sun_path) {
        fprintf(stderr, "path too long: %s\n", path);
        exit(2);
    }
    strcpy(sun->sun_path, path);
}

int main(int argc, char **argv) {
    long iterations = 0, hits = 0;
    if (argc < 3) {
        fprintf(stderr, "usage: racer MODE ARGS... SECONDS\n");
        return 2;
    }
    double end = now() + atof(argv[argc - 1]);
    const char *mode = argv[1];
    if (strcmp(mode, "swapdir") == 0 && argc == 6) {
        int dir = open(argv[2], O_DIRECTORY | O_RDONLY);
        if (dir < 0) {
            perror("open");
            return 1;
        }
        for (; now() < end; iterations++)
            if (syscall(SYS_renameat2, dir, argv[3], dir, argv[4], RENAME_EXCHANGE) == 0)
                hits++;
    } else if (strcmp(mode, "plantlink") == 0 && argc == 6) {
        int dir = open(argv[2], O_DIRECTORY | O_RDONLY);
        if (dir < 0) {
            perror("open");
            return 1;
        }
        const char *name = argv[3], *target = argv[4];
        double planted = 0;
        for (; now() < end; iterations++) {
            struct stat st;
            if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
                continue;
            if (S_ISSOCK(st.st_mode)) {
                unlinkat(dir, ".plant", 0);
                if (symlinkat(target, dir, ".plant") == 0 &&
                    renameat(dir, ".plant", dir, name) == 0) {
                    hits++;
                    planted = now();
                }
            } else if (S_ISLNK(st.st_mode) && now() - planted > 0.005) {
                unlinkat(dir, name, 0); /* after 5 ms, so the daemon can bind again */
            }
        }
    } else if ((strcmp(mode, "sendto") == 0 || strcmp(mode, "connect") == 0) && argc == 4) {
        struct sockaddr_un sun;
        address(&sun, argv[2]);
        int dgram = strcmp(mode, "sendto") == 0;
        int fd = socket(AF_UNIX, dgram ? SOCK_DGRAM : SOCK_STREAM, 0);
        for (; now() < end; iterations++) {
            if (dgram) {
                if (sendto(fd, "x", 1, MSG_DONTWAIT, (struct sockaddr *)&sun, sizeof sun) == 1)
                    hits++;
            } else {
                if (connect(fd, (struct sockaddr *)&sun, sizeof sun) == 0) {
                    hits++;
                    close(fd);
                    fd = socket(AF_UNIX, SOCK_STREAM, 0);
                }
            }
        }
        close(fd);
    } else {
        fprintf(stderr, "unknown mode or arguments: %s\n", mode);
        return 2;
    }
    printf("iterations %ld hits %ld\n", iterations, hits);
    return 0;
}
