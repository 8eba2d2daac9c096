/* Process identity for leases and lane ownership: a pid alone can be reused, so an
 * owner is (pid, start time). On Linux the start time comes from /proc/PID/stat
 * (field 22, clock ticks since boot); elsewhere it is 0 and only the pid is checked. */
#ifndef EMP_FASTBUF_PROC_H
#define EMP_FASTBUF_PROC_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* Reads the start time of `pid`. Returns 1 when the process exists and is not a
 * zombie, 0 when it is gone or a zombie, -1 when it cannot tell (not Linux). */
static int efb_proc_stat(long pid, uint64_t *start) {
    *start = 0;
#ifdef __linux__
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ') return -1;
    p += 2;
    char state = *p;
    if (state == 'Z' || state == 'X' || state == 'x') return 0;
    /* p points at field 3 (state); the start time is field 22. */
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p) return -1;
        p++;
    }
    *start = strtoull(p, NULL, 10);
    return 1;
#else
    (void)pid;
    return -1;
/* Sleeps `ns` nanoseconds (the block policy's wait; called without the GIL). */
static void efb_sleep_ns(long ns) {
    struct timespec ts = {ns / 1000000000L, ns % 1000000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

#endif
}

/* 1 if the process (pid, start) is alive; start 0 means "do not compare". */
static int efb_alive(long pid, uint64_t start) {
    if (pid <= 0) return 0;
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH) return 0;
    uint64_t st;
    int r = efb_proc_stat(pid, &st);
    if (r == 0) return 0;
    if (r < 0) return 1;
    if (start != 0 && st != start) return 0;
    return 1;
}

/* Back every page of a new segment now (Linux: tmpfs allocates lazily and a later
 * write to a page it cannot back is a SIGBUS). Returns 0 or an errno value. */
static int efb_reserve(int fd, uint64_t size) {
#ifdef __linux__
    return posix_fallocate(fd, 0, (off_t)size);
#else
    (void)fd; (void)size;
    return 0;
/* Sleeps `ns` nanoseconds (the block policy's wait; called without the GIL). */
static void efb_sleep_ns(long ns) {
    struct timespec ts = {ns / 1000000000L, ns % 1000000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

#endif
}

static uint64_t efb_now_ns(int realtime) {
    struct timespec ts;
    clock_gettime(realtime ? CLOCK_REALTIME : CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Sleeps `ns` nanoseconds (the block policy's wait; called without the GIL). */
static void efb_sleep_ns(long ns) {
    struct timespec ts = {ns / 1000000000L, ns % 1000000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

#endif
