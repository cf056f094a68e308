/*
 * Helpers shared by the hostile-conditions tests (test_hostile.c, test_faults.c,
 * test_alloc.c, test_security.c) and the soak (soak.c), over the toolkit
 * (testkit.h): a watchdog that turns a hang into a clear failure, the stats
 * balance, fd and heap counters, and a port nobody listens on.
 *
 * Nothing here asserts a duration: the watchdog bounds are generous and exist
 * only so that a hang fails with a message instead of a ctest timeout.
 */
#ifndef SURPOOL_FAULT_UTIL_H
#define SURPOOL_FAULT_UTIL_H

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <malloc.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "surpool.h"

#include "testkit.h"

#define FU_SANITIZED TK_SANITIZED
#if FU_SANITIZED
/* From the sanitizer runtime (<sanitizer/allocator_interface.h>, which GCC
 * does not install). */
size_t __sanitizer_get_current_allocated_bytes(void);
#endif

/* The toolkit's names, kept for the tests that use these. */
#define FU_SLOW TK_SLOW
#define fu_sleep_ms tk_sleep_ms
#define fu_now_ms tk_now_ms
#define fu_join tk_join

/* ---- watchdog: testkit.h's tk_watchdog ---- */
#define fu_watchdog tk_watchdog

/* ---- exclusivity: no connection may be held by two callers at once ---- */

/* The toolkit's lease tracker (testkit.h) under its older names. */
typedef tk_leases fu_tracker;
#define fu_tracker_init tk_leases_init
#define fu_tracker_destroy tk_leases_destroy
#define fu_track_acquire tk_lease_track
#define fu_track_release tk_lease_untrack

/* ---- stats ---- */

/* Connections opened minus closed equals those the pool holds. `created` counts
 * completed connects only, so slots still connecting are not in it: the
 * identity is created - destroyed == idle + in_use (it holds at any moment,
 * load or not). Returns 1 when it holds. */
static inline int fu_stats_balanced(surpool_pool *p, surpool_stats *st)
{
    surpool_pool_stats(p, st);
    return (int64_t)st->created - (int64_t)st->destroyed == st->idle + st->in_use;
}

/* Once every caller has released its leases: wait (bounded) until no lease is
 * out but the lane's. The lane thread and keepalive pings borrow and return
 * connections on their own threads, a moment apart from the callers. Returns
 * 1 when that happened, 0 if leases were still out after 10 s (times
 * TK_SLOW); `st` holds the last stats read either way. */
static inline int fu_settle_leases(surpool_pool *p, surpool_stats *st)
{
    int ok;
    TK_POLL(ok, (surpool_pool_stats(p, st), st->in_use == st->lane_connections), 10000);
    return ok;
}

/* ---- resources ---- */

static inline int fu_count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory stream's own fd */
}

/* Bytes of heap in use now: the sanitizer allocator's count under ASan/TSan
 * (glibc's mallinfo2 does not see it), mallinfo2().uordblks otherwise. */
static inline size_t fu_heap_in_use(void)
{
#if FU_SANITIZED
    return __sanitizer_get_current_allocated_bytes();
#else
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks;
#endif
}

/* A loopback TCP port nobody listens on (bound, then closed). 0 on failure. */
static inline int fu_dead_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    int port = 0;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

#endif
