/*
 * Steps of one process's wall clock, for fault campaigns and tests.
 *
 * Preloaded into a node (LD_PRELOAD), it adds to CLOCK_REALTIME -- and to
 * gettimeofday() and time(), which read it -- the number of seconds written
 * in the file named by KVTWIST_WALLCLOCK_FILE (e.g. "-120"), re-read at most
 * every 50 ms.  Nothing else moves: CLOCK_MONOTONIC, CLOCK_BOOTTIME and every
 * sleep stay real, as on a machine whose clock an operator or NTP stepped.
 * (libfaketime 0.9.10 with FAKETIME_DONT_FAKE_MONOTONIC makes time.sleep
 * fail with EINVAL, so it cannot stand in for this.)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static double offset_s;
static long long next_read_ns;

static int real_now(clockid_t id, struct timespec *ts)
{
    if (real_clock_gettime == NULL)
        real_clock_gettime = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    return real_clock_gettime(id, ts);
}

static double current_offset(void)
{
    struct timespec m;
    if (real_now(CLOCK_MONOTONIC, &m) != 0)
        return offset_s;
    long long now = (long long)m.tv_sec * 1000000000LL + m.tv_nsec;
    if (now >= __atomic_load_n(&next_read_ns, __ATOMIC_RELAXED)) {
        __atomic_store_n(&next_read_ns, now + 50000000LL, __ATOMIC_RELAXED);
        const char *path = getenv("KVTWIST_WALLCLOCK_FILE");
        FILE *f = path ? fopen(path, "r") : NULL;
        if (f != NULL) {
            double v;
            if (fscanf(f, "%lf", &v) == 1)
                offset_s = v;
            fclose(f);
        }
    }
    return offset_s;
}

static void shift(struct timespec *ts, double by)
{
    long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + (long long)(by * 1e9);
    ts->tv_sec = (time_t)(ns / 1000000000LL);
    ts->tv_nsec = (long)(ns % 1000000000LL);
    if (ts->tv_nsec < 0) {
        ts->tv_nsec += 1000000000L;
        ts->tv_sec -= 1;
    }
}

int clock_gettime(clockid_t id, struct timespec *ts)
{
    int r = real_now(id, ts);
    if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE))
        shift(ts, current_offset());
    return r;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz)
{
    struct timespec ts;
    (void)tz;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return -1;
    tv->tv_sec = ts.tv_sec; /* glibc declares tv non-null */
    tv->tv_usec = ts.tv_nsec / 1000;
    return 0;
}

time_t time(time_t *t)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (t != NULL)
        *t = ts.tv_sec;
    return ts.tv_sec;
}
