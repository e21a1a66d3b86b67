/*
 * parts.h - what the parts of ephttpd share: the options (parsed by
 * ephttpd.c), the process's errors, signals and wake pipe (process.c), a
 * worker's event loop (server.c, uring_loop.c), the supervisor of several
 * workers (workers.c), the holders (holders.c) and the counters with their
 * JSON lines (stats.c).  The HTTP state of a connection is conn.h's, the
 * request parser http.h's.
 */
#ifndef EPHTTPD_PARTS_H
#define EPHTTPD_PARTS_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#define MAX_WORKERS 256
#define MAX_HOLDERS 64

struct options {
	const char *backend;
	const char *bind;
	int port;
	int backlog;
	long msgsize;
	int workers;
	const char *ready_file;
	int reads_per_event;   /* full reads of one connection per readiness event (server.c) */
	int accepts_per_event; /* accepts per listener event */
	int dead_holders;      /* --dead-holders: processes holding dead connections in our set (holders.c) */
	int dead_port;         /* their listener's port; 0: a free one */
};

/* A worker's counters; the supervisor sums them (stats.c prints them). */
struct worker_stats {
	uint64_t accepted, refused, closed, open, peak_open;
	uint64_t requests, responses_200, responses_4xx;
	uint64_t wait_calls, events;
	uint64_t reads_capped, accepts_capped; /* a per-event cap left work for the loop's ready list */
	uint64_t ready_served;                 /* descriptors served from the ready list */
	/* io_uring-recv's (uring_loop.c): SQEs submitted, CQEs reaped, recvs armed again after -ENOBUFS */
	uint64_t submissions, completions, recv_rearmed;
	int32_t ring_counters; /* 1: the loop keeps the three above, and the JSON lines show them */
	double user_cpu_s, sys_cpu_s;
	int32_t pid;
};

/* What both loops count the same way (stats.c): a connection admitted, one closed, and what the connection's
 * state machine counted (conn.h's struct conn_counts: requests parsed, responses sent). */
struct conn_counts;
void count_opened(struct worker_stats *st);
void count_closed(struct worker_stats *st);
void count_http(struct worker_stats *st, const struct conn_counts *counts);

/* Set by the signal handlers (process.c); the loops act on them. */
extern volatile sig_atomic_t stop_requested, snapshot_requested;
/* The signal mask outside the waits. */
extern sigset_t unblocked_signals;
/* The write end of the running worker's wake-up pipe, for the signal handlers. */
extern int wake_write_fd;
/* A loop's wake pipe (its write end in wake_write_fd, for the signal handlers) and the spare descriptor it
 * closes to refuse a connection when the process is out of descriptors; dies if either cannot be opened. */
void open_wake_and_reserve(int *wake_fd, int *reserve_fd);
/* Empties the wake pipe once the loop has woken (the signals are in the flags above). */
void drain_wake_pipe(int wake_fd);
/* Closes what open_wake_and_reserve opened; a descriptor below 0 is one never opened. */
void close_wake_and_reserve(int wake_fd, int reserve_fd);

/* One line on stderr; usage_error then exits 2 (bad usage), die exits 1 (anything else). */
_Noreturn void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
_Noreturn void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void install_handler(int sig, void (*handler)(int));
/* The process's handlers: SIGTERM and SIGINT set stop_requested, SIGUSR1 snapshot_requested, each writing to
 * the wake pipe; SIGPIPE ignored; unblocked_signals is the mask they leave. */
void install_loop_handlers(void);
/* Writes a byte to the wake pipe (from a signal handler): the loop's wait returns. */
void wake_loop(void);

struct server;
struct holders;
struct ev_event;
struct ev_loop;
/* A worker's loop on listen_fd for up to max_fds descriptors; exits 2 when the backend is refused. */
struct server *server_create(const struct options *o, int listen_fd, int max_fds);
/* Serves until SIGTERM/SIGINT; returns 0, or 1 if the wait failed.  *stats is the worker's counters. */
int server_run(struct server *s, int worker, struct worker_stats **stats);
/* Closes what the loop holds and frees it, so that a leak checker sees only real leaks. */
void server_destroy(struct server *s);
/* The worker's event loop, and the holders whose connections it watches (holders.c). */
struct ev_loop *server_loop(struct server *s);
void server_attach_holders(struct server *s, struct holders *h);

/* --dead-holders N (holders.c): forks them on the loop, listening on listener (which it closes). */
struct holders *holders_start(const struct options *o, struct ev_loop *loop, int listener, int port,
			      int fd_limit);
/* An EV_FOREIGN event: to the holder of the connection. */
void holders_forward(struct holders *hs, const struct ev_event *e);
/* After SIGCHLD: notes and reports the holders that died. */
void holders_reap(struct holders *hs);
/* The "dead_holders" JSON member; its length, or -1 if it does not fit. */
int holders_json(struct holders *hs, char *buf, size_t size);
/* Ends the holders (their connections close with them) and frees hs; NULL is nothing. */
void holders_stop(struct holders *hs);

/* --backend io_uring-recv: uring_loop.c's loop, with the same contract as server.c's.  A listen_fd
 * below 0 makes a loop that only checks the kernel's features (exit 2 naming one it lacks). */
#define URING_RECV_BACKEND "io_uring-recv"
struct uring_server;
struct uring_server *uring_server_create(const struct options *o, int listen_fd, int max_fds);
int uring_server_run(struct uring_server *s, int worker, struct worker_stats **stats);
void uring_server_destroy(struct uring_server *s);

/* A worker's whole life on either loop: creates it, announces (when port >= 0), serves until told to stop,
 * copies its counters to *out and frees it.  Returns server_run's status. */
int serve_worker(const struct options *o, int listen_fd, int max_fds, int worker, int port,
		 struct worker_stats *out);

/* The "listening" line (and --ready-file), the "snapshot" and "stats" lines. */
void announce(const struct options *o, int port, int dead_port, int fd_limit);
void take_cpu_times(struct worker_stats *st);
/* holders: the "dead_holders" member's source, or NULL. */
void print_snapshot(struct worker_stats *st, int worker, struct holders *holders);
void print_stats(const struct options *o, int fd_limit, const struct worker_stats *per_worker, int count,
		 struct holders *holders);

/* --workers N > 1: forks them, forwards signals, sums their stats; returns the exit status. */
int run_workers(const struct options *o, const int *listeners, int port, int fd_limit);

#endif
