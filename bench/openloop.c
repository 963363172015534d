/*
 * openloop: a constant-rate (open-loop) HTTP/1.1 load generator for the
 * benchmarks, in C so that its own CPU time and lateness stay small.
 *
 *   openloop HOST PORT PATH RATE SECONDS CONNECTIONS [--same] [--header 'Name: value']...
 *
 * Request i is due at start + i / RATE. A timer (timerfd) wakes the
 * generator every TICK_NS or at the next due time, whichever is later, and
 * each due request goes out on an idle keep-alive connection; when none is
 * idle it waits in a queue and goes out on the next connection to finish
 * (``queued_for_a_connection`` counts those). Latency runs from the write to
 * the end of the answer; ``late_p99_ms`` is how late the writes were against
 * the schedule (wrk2 adds that lateness to the latency; here it is reported
 * beside it). Unless --same, request i asks for PATH/i?n=i, like the
 * closed-loop cases. Answers must carry Content-Length (or have no body);
 * a 2xx or 3xx counts as a success, anything else or a lost connection as
 * an error.
 *
 * Prints one JSON object: requests, errors, duration, rps, p50_ms, p99_ms,
 * p999_ms, max_ms, target_rps, late_p99_ms, queued_for_a_connection, cpu_s (its own CPU).
 * Exit status 0, or 2 on bad arguments, 1 when it cannot connect.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define TICK_NS 50000L /* at most 20,000 wake-ups a second */
#define BUF 65536

typedef struct {
    int fd;
    int busy;
    int64_t sent_at;
    size_t used;
    char buf[BUF];
} conn_t;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct_ms(int64_t *v, size_t n, double q) {
    if (n == 0) return 0.0;
    size_t i = (size_t)(q / 100.0 * (double)n);
    if (i >= n) i = n - 1;
    return (double)v[i] / 1e6;
}

/* Where the first complete answer in c->buf ends, 0 if incomplete, -1 if unusable. */
static long answer_end(conn_t *c, int *ok) {
    char *end = memmem(c->buf, c->used, "\r\n\r\n", 4);
    if (end == NULL) return c->used >= BUF ? -1 : 0;
    size_t head = (size_t)(end - c->buf) + 4;
    long length = 0;
    for (char *p = c->buf; p < end; p++) {
        if (p[0] == '\n' && (size_t)(end - p) > 16 && strncasecmp(p + 1, "content-length:", 15) == 0) {
            length = strtol(p + 16, NULL, 10);
            break;
        }
    }
    if (length < 0 || head + (size_t)length > BUF) return -1;
    if (c->used < head + (size_t)length) return 0;
    *ok = c->used > 9 && (c->buf[9] == '2' || c->buf[9] == '3');
    return (long)(head + (size_t)length);
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: openloop HOST PORT PATH RATE SECONDS CONNECTIONS [--same] [--header H]...\n");
        return 2;
    }
    const char *host = argv[1], *port = argv[2], *path = argv[3];
    double rate = atof(argv[4]), seconds = atof(argv[5]);
    int nconn = atoi(argv[6]);
    int same = 0;
    char extra[4096] = "";
    for (int i = 7; i < argc; i++) {
        if (strcmp(argv[i], "--same") == 0) {
            same = 1;
        } else if (strcmp(argv[i], "--header") == 0 && i + 1 < argc) {
            if (strlen(extra) + strlen(argv[i + 1]) + 3 >= sizeof extra) return 2;
            strcat(extra, argv[++i]);
            strcat(extra, "\r\n");
        } else {
            fprintf(stderr, "openloop: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (rate <= 0 || seconds <= 0 || nconn <= 0) return 2;

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
    if (getaddrinfo(host, port, &hints, &ai) != 0) return 1;
    int ep = epoll_create1(0);
    conn_t *conns = calloc((size_t)nconn, sizeof(conn_t));
    int *idle = malloc(sizeof(int) * (size_t)nconn);
    int nidle = 0;
    for (int i = 0; i < nconn; i++) {
        int fd = socket(ai->ai_family, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            fprintf(stderr, "openloop: cannot connect to %s:%s: %s\n", host, port, strerror(errno));
            return 1;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conns[i].fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        idle[nidle++] = i;
    }
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event tev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);

    size_t cap = (size_t)(rate * seconds) + 16;
    int64_t *lat = malloc(sizeof(int64_t) * cap), *late = malloc(sizeof(int64_t) * cap);
    int64_t *queue = malloc(sizeof(int64_t) * cap); /* intended send times waiting */
    /* nlate: requests written; nlat: answers read; bad: answers not 2xx/3xx. */
    size_t nlat = 0, nlate = 0, qhead = 0, qtail = 0, sent = 0, queued = 0, bad = 0;
    char req[8192];
    const int64_t start = now_ns(), end = start + (int64_t)(seconds * 1e9);
    const double interval = 1e9 / rate;
    int running = 1;

#define SEND(ci, intended, t)                                                                   \
    do {                                                                                        \
        int n_;                                                                                 \
        if (same)                                                                               \
            n_ = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%s\r\n%s\r\n", path,     \
                          host, port, extra);                                                   \
        else                                                                                    \
            n_ = snprintf(req, sizeof req, "GET %s/%zu?n=%zu HTTP/1.1\r\nHost: %s:%s\r\n%s\r\n", \
                          path, sent + 1, sent + 1, host, port, extra);                         \
        late[nlate++] = (t) - (intended);                                                       \
        conns[ci].busy = 1;                                                                     \
        conns[ci].sent_at = (t);                                                                \
        (void)send(conns[ci].fd, req, (size_t)n_, MSG_NOSIGNAL); /* a failure: never answered */ \
    } while (0)

    while (running || nidle < nconn) {
        int64_t t = now_ns();
        if (running && t >= end) running = 0;
        if (running) {
            size_t due = (size_t)((double)(t - start) / interval);
            while (sent < due && sent < cap) {
                int64_t intended = start + (int64_t)((double)sent * interval);
                if (nidle > 0) {
                    int ci = idle[--nidle];
                    SEND(ci, intended, t);
                } else {
                    queue[qtail++] = intended;
                    queued++;
                }
                sent++;
            }
            int64_t next = start + (int64_t)((double)(sent + 1) * interval);
            if (next < t + TICK_NS) next = t + TICK_NS;
            struct itimerspec its = {.it_value = {.tv_sec = next / 1000000000L,
                                                  .tv_nsec = next % 1000000000L}};
            timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
        } else if (t > end + 5000000000L) {
            break; /* answers still missing 5 s after the end: counted as errors */
        }
        struct epoll_event events[64];
        int n = epoll_wait(ep, events, 64, running ? -1 : 100);
        for (int k = 0; k < n; k++) {
            uint32_t ci = events[k].data.u32;
            if (ci == UINT32_MAX) {
                uint64_t ticks;
                if (read(tfd, &ticks, sizeof ticks) < 0) { /* nothing: the loop re-arms */ }
                continue;
            }
            conn_t *c = &conns[ci];
            ssize_t got = recv(c->fd, c->buf + c->used, BUF - c->used, 0);
            int ok = 0;
            long done = 0;
            if (got > 0) {
                c->used += (size_t)got;
                done = answer_end(c, &ok);
            } else if (got < 0 && errno == EAGAIN) {
                continue;
            }
            if (got <= 0 || done < 0) { /* closed, or an answer it can't read: lost for good */
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->busy = 0;
                nconn--;
                continue;
            }
            if (done == 0) continue;
            int64_t t2 = now_ns();
            lat[nlat++] = t2 - c->sent_at;
            if (!ok) bad++;
            memmove(c->buf, c->buf + done, c->used - (size_t)done);
            c->used -= (size_t)done;
            c->busy = 0;
            if (running && qhead < qtail) {
                SEND(ci, queue[qhead++], t2);
            } else {
                idle[nidle++] = (int)ci;
            }
        }
    }
    double elapsed = (double)(now_ns() - start) / 1e9;
    size_t errors = bad + (nlate - nlat); /* answered badly, or never */
    qsort(lat, nlat, sizeof(int64_t), cmp_i64);
    qsort(late, nlate, sizeof(int64_t), cmp_i64);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    printf("{\"requests\": %zu, \"errors\": %zu, \"duration\": %.3f, \"rps\": %.1f, "
           "\"p50_ms\": %.4f, \"p99_ms\": %.4f, \"p999_ms\": %.4f, \"max_ms\": %.4f, \"target_rps\": %.1f, \"late_p99_ms\": %.4f, "
           "\"queued_for_a_connection\": %zu, \"cpu_s\": %.3f, \"generator\": \"openloop\"}\n",
           nlat, errors, elapsed, (double)nlat / elapsed, pct_ms(lat, nlat, 50),
           pct_ms(lat, nlat, 99), pct_ms(lat, nlat, 99.9), pct_ms(lat, nlat, 100), rate, pct_ms(late, nlate, 99), queued, cpu);
    return 0;
}
