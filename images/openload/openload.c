/*
 * openload - an open-loop HTTP load generator: requests at a fixed offered
 * rate over keep-alive connections, with latency counted from the time each
 * request was due (the coordinated-omission correction of wrk2).
 *
 * What is measured: the latency of each request from its intended send time
 * to the end of its reply ("corrected"), and from its actual send time
 * ("uncorrected", for comparison), as percentiles of a histogram of three
 * significant digits over 1 us..60 s (hist.h); the rate of replies achieved
 * against the rate offered; errors by kind; and the generator's own CPU time
 * (getrusage) over the load, in total and per reply, with its loop's waits.
 *
 * The model: --connections C keep-alive connections, opened before the
 * schedule starts (their set-up is not measured).  Request n of the run is due
 * at t0 + n/R and belongs to connection n mod C, so each connection has its
 * own fixed schedule at R/C requests per second, the connections' schedules
 * interleaved evenly, all fixed in advance and independent of replies.  One
 * request is in flight per connection (no pipelining): a request due while its
 * connection still waits for a reply waits too, and is sent the moment that
 * reply is complete; its latency counts from its due time all the same, so a
 * server that stalls is charged for every request it delayed, not just the
 * few in flight when it stalled.  Requests are due during --duration seconds;
 * then the generator sends those still waiting and collects their replies for
 * at most --timeout seconds more (the drain).  A request unanswered after
 * --timeout seconds is an error and its connection is closed; a closed
 * connection is opened again when it next has a request due.
 *
 * Pacing: one epoll loop, single-threaded, that sleeps until the next request
 * is due with epoll_pwait2's nanosecond timeout (or, with --timer timerfd or
 * where the kernel lacks epoll_pwait2, a timerfd armed at the due time), and
 * a timer slack of --timer-slack-us (PR_SET_TIMERSLACK; 1 us by default, where
 * Linux's own is 50 us: a larger slack lets the kernel end epoll_pwait2's
 * sleep that much late to batch wakeups, which saves CPU and adds up to that
 * much to the latency of requests sent on time; a timerfd has no slack).
 * With --batch-us W the loop sleeps until the next request has been due W us
 * (0 by default), so that one wakeup sends every request due in that window,
 * none before its due time (next_deadline says why).  It never polls without
 * sleeping except when a request is already due.  Each wakeup handles the
 * replies that arrived, then every request that has come due: a request whose
 * connection is free is sent at once.
 *
 * The two flags, always printed with the figures behind them:
 *   lagged: the generator found requests due later than --lag-threshold-us
 *     after their due time (late sends, lag.h): its fault (it was
 *     descheduled, stopped, or too busy), and the corrected latency of such a
 *     request includes the lag.  A request found due on time but behind a
 *     busy connection is the server's, not lag.  `raised` says that at least
 *     one send was late; that alone moves no percentile.  Late sends can move
 *     the p-th percentile of the latency only when they are at least (1 - p)
 *     of all sends, so `p99` is raised at 1 % of sends late and `p99.9` at
 *     0.1 % (LAG_PERCENTILES): only where it holds may that percentile be the
 *     generator's doing.
 *   overloaded: the achieved rate fell more than 1 % below the offered one:
 *     the server (or errors) did not keep up.  The achieved rate is the
 *     replies to the run's requests over the time from t0 to the last of them
 *     (at least --duration), so a server that keeps up scores the offered
 *     rate, and one that fell behind and caught up in the drain does not.
 *
 * Not measured: connection set-up before t0; the time a reply spends in the
 * generator's socket before the loop reads it (a reply's end is taken when
 * the loop reads it: a stopped generator inflates latency, which `lagged`
 * may not catch when the reply was in flight at the time); requests never
 * sent or never answered by the end of the drain (counted as errors
 * "unsent" and "unanswered", not in the percentiles); HTTP beyond what a
 * benchmark server answers: replies need a Content-Length (no chunked
 * encoding), one request per connection at a time, IPv4 addresses only.
 *
 * Accounting: every request due (`requests`) ends as exactly one of a reply
 * (`replies`, `non_2xx` of them with a status other than 2xx) or an error of
 * one kind (`errors`); bytes a server sends with no request in flight close
 * the connection and are counted apart (`unsolicited`).
 *
 * Clock: every time here is CLOCK_MONOTONIC, the clock of perf's -k
 * CLOCK_MONOTONIC and of Python's time.monotonic_ns(), so a request's due time
 * reads directly against a capture of the host's scheduler (a container shares
 * the host's clock: Docker puts it in no time namespace).  The JSON's
 * `schedule` gives the schedule's start t0 and its end t0 + --duration, in
 * nanoseconds of that clock: every request is due in [start_ns, end_ns).
 *
 * Each request (--requests-out PATH): its due time and corrected latency, one
 * fixed-size binary record per request due, in due order, written to PATH
 * after the drain, before the JSON; what a record holds and what it leaves out
 * is in reqlog.h.  The slots are allocated and filled before the schedule
 * starts (at most REQLOG_MAX requests: --rate x --duration beyond it is bad
 * usage) and the file is opened then, so that the schedule does no I/O and no
 * allocation for it.
 *
 * Output: one JSON object on stdout.  Exit 0 after a run (errors included),
 * 1 when the connections cannot be opened at the start or the --requests-out
 * file cannot be made, allocated for or written, 2 on bad usage:
 * a rate of 0 or below, fewer than 1 connection, or more connections than
 * the descriptor limit allows once the soft limit is raised to the hard one.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "fdlimit.h"
#include "hist.h"
#include "lag.h"
#include "options.h"
#include "reqlog.h"

#define DEFAULT_CONNECTIONS   100
#define DEFAULT_DURATION_S    10.0
#define DEFAULT_TIMEOUT_S     5.0
#define DEFAULT_LAG_THRESHOLD 1000 /* us */
#define DEFAULT_TIMER_SLACK_US 1
#define MAX_TIMER_SLACK_US    10000
#define DEFAULT_BATCH_US      0
#define MAX_BATCH_US          10000
#define MAX_DURATION_S        86400.0
#define MAX_TIMEOUT_S         600.0
#define MAX_RATE              1e8
/* Descriptors besides the connections: stdio, epoll, timerfd, slack. */
#define RESERVED_FDS 16
/* A reply head larger than this is an error ("parse"). */
#define HEAD_MAX 4096
#define READ_BUFFER (64 * 1024)
#define MAX_EVENTS  256
/* How often in-flight requests are checked against --timeout. */
#define HOUSEKEEPING_NS 50000000LL
/* The percentiles `lagged` speaks for, each with the share of sends late that could move it, 1 - p, as one send
 * in `one_in` (whole numbers: the comparison is exact). */
static const struct {
	const char *key;
	uint64_t one_in;
} LAG_PERCENTILES[] = { { "p99", 100 }, { "p99.9", 1000 } };
/* The generator's tolerance before `overloaded`: achieved below (1 - this) x offered. */
#define OVERLOAD_TOLERANCE 0.01
#define TIMER_TOKEN UINT32_MAX

static const char *host = "127.0.0.1";
static long port = 8080;
static const char *path = "/";
static long connections = DEFAULT_CONNECTIONS;
static double rate = NAN; /* until --rate is read */
static double duration_s = DEFAULT_DURATION_S;
static double timeout_s = DEFAULT_TIMEOUT_S;
static long lag_threshold_us = DEFAULT_LAG_THRESHOLD;
static const char *timer_mode = "auto";
static long timer_slack_us = DEFAULT_TIMER_SLACK_US;
static long batch_us = DEFAULT_BATCH_US;
static const char *requests_out = "";

static volatile sig_atomic_t interrupted;

static _Noreturn __attribute__((format(printf, 1, 2))) void usage_error(const char *fmt, ...)
{
	va_list args;
	va_start(args, fmt);
	fprintf(stderr, "openload: ");
	vfprintf(stderr, fmt, args);
	fprintf(stderr, " (see openload --help)\n");
	va_end(args);
	exit(2);
}

static _Noreturn __attribute__((format(printf, 1, 2))) void fail(const char *fmt, ...)
{
	va_list args;
	va_start(args, fmt);
	fprintf(stderr, "openload: ");
	vfprintf(stderr, fmt, args);
	fprintf(stderr, "\n");
	va_end(args);
	exit(1);
}

/* The options, one a row, in the order --help lists them: each sets one of the variables above. */
static const struct option_spec option_specs[] = {
	{ "rate", "R", .real = &rate, .no_default = true,
	  .help = "requests per second over all connections (required, > 0)" },
	{ "connections", "C", .whole = &connections, .help = "keep-alive connections" },
	{ "duration", "S", .real = &duration_s, .help = "seconds during which requests are due" },
	{ "host", "ADDR", .text = &host, .help = "IPv4 address of the server" },
	{ "port", "N", .whole = &port, .help = "its port" },
	{ "path", "P", .text = &path, .help = "the request target" },
	{ "timeout", "S", .real = &timeout_s, .help = "a request unanswered this long is an error; also the drain" },
	{ "lag-threshold-us", "N", .whole = &lag_threshold_us,
	  .help = "a request found due this late is a late send (the generator's lag)" },
	{ "timer", "MODE", .text = &timer_mode, .help = "auto|epoll_pwait2|timerfd: how the loop sleeps until due" },
	{ "timer-slack-us", "N", .whole = &timer_slack_us,
	  .help = "how late the kernel may end a sleep, to batch wakeups" },
	{ "batch-us", "N", .whole = &batch_us,
	  .help = "sleep until a request is this late, then send all due: fewer wakeups" },
	{ "requests-out", "PATH", .text = &requests_out,
	  .help = "write each request's due time and latency there after the run (binary, reqlog.h)" },
};

static const struct command_line command_line = {
	.usage = "usage: openload --rate R [options]\n"
		 "Offers R requests/s over keep-alive connections, each on its own fixed schedule (open loop),\n"
		 "and prints one JSON object: rates, latency percentiles from the due time, errors, own CPU.\n\n",
	.options = option_specs,
	.count = sizeof(option_specs) / sizeof(option_specs[0]),
	.help_meaning = "show this and exit",
	.layout = { .option_width = 21 },
	.says = {
		.unknown = "unknown option or missing value in '%s'",
		.missing = "unknown option or missing value in '%s'",
		.not_whole = "--%s needs a whole number, not '%s'",
		.not_number = "--%s needs a number, not '%s'",
		.unexpected = "unexpected argument '%s'",
		.complain = usage_error,
	},
};

/* The values together, each within its bounds. */
static void check_args(void)
{
	if (isnan(rate))
		usage_error("--rate is required: requests per second, e.g. --rate 10000");
	if (!(rate > 0))
		usage_error("--rate must be above 0 requests/s (got %g)", rate);
	if (rate > MAX_RATE)
		usage_error("--rate %g is beyond what one generator can offer: use %g or less", rate, MAX_RATE);
	if (connections < 1)
		usage_error("--connections must be at least 1 (got %ld)", connections);
	if (!(duration_s > 0) || duration_s > MAX_DURATION_S)
		usage_error("--duration must be above 0 and at most %g s (got %g)", MAX_DURATION_S, duration_s);
	if (!(timeout_s > 0) || timeout_s > MAX_TIMEOUT_S)
		usage_error("--timeout must be above 0 and at most %g s (got %g)", MAX_TIMEOUT_S, timeout_s);
	if (port < 1 || port > 65535)
		usage_error("--port must be 1-65535 (got %ld)", port);
	if (lag_threshold_us < 0)
		usage_error("--lag-threshold-us must be 0 or more (got %ld)", lag_threshold_us);
	if (timer_slack_us < 1 || timer_slack_us > MAX_TIMER_SLACK_US)
		usage_error("--timer-slack-us must be 1-%d (got %ld)", MAX_TIMER_SLACK_US, timer_slack_us);
	if (batch_us < 0 || batch_us > MAX_BATCH_US)
		usage_error("--batch-us must be 0-%d (got %ld)", MAX_BATCH_US, batch_us);
	if (strcmp(timer_mode, "auto") && strcmp(timer_mode, "epoll_pwait2") && strcmp(timer_mode, "timerfd"))
		usage_error("unknown --timer '%s' (choose auto|epoll_pwait2|timerfd)", timer_mode);
	if (*requests_out && ceil(rate * duration_s) > (double)REQLOG_MAX)
		usage_error("--requests-out keeps at most %llu requests (got --rate x --duration = %.0f)", REQLOG_MAX,
			    ceil(rate * duration_s));
	if (!*path || path[0] != '/' || strpbrk(path, " \r\n"))
		usage_error("--path must start with '/' and hold no space or line break (got '%s')", path);
	struct in_addr addr;
	if (inet_pton(AF_INET, host, &addr) != 1)
		usage_error("--host must be an IPv4 address such as 127.0.0.1 (got '%s')", host);
}

static void parse_args(int argc, char **argv)
{
	options_parse(&command_line, argc, argv);
	check_args();
}

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double cpu_seconds(const struct rusage *r, bool user)
{
	const struct timeval *tv = user ? &r->ru_utime : &r->ru_stime;
	return (double)tv->tv_sec + (double)tv->tv_usec / 1e6;
}

/* ---- the run's state ------------------------------------------------------------------------------- */

enum conn_state { C_DOWN, C_CONNECTING, C_IDLE, C_BUSY };

struct conn {
	int fd;
	enum conn_state state;
	bool want_write;   /* registered for EPOLLOUT */
	uint64_t due;      /* this connection's requests due so far */
	uint64_t next;     /* the next of them to send; while busy, next - 1 is in flight */
	int64_t intended_ns, sent_ns; /* of the request in flight */
	size_t written;    /* of the request in flight */
	/* The reply being read. */
	bool in_body;
	uint64_t body_left;
	int status;
	bool closes;
	char *head;        /* a head split over reads, allocated at the first such split */
	size_t head_len;
};

enum error_kind { E_CONNECT, E_WRITE, E_READ, E_CLOSED, E_TIMEOUT, E_PARSE, E_KINDS };
static const char *const error_names[E_KINDS] = { "connect", "write", "read", "closed", "timeout", "parse" };

static struct {
	int epfd, timerfd;
	bool use_timerfd;
	int64_t timer_armed_ns;
	struct sockaddr_in addr;
	char request[1024];
	size_t request_len;
	struct conn *conns;
	int64_t t0, t_end, drain_end;
	double ns_per_request;
	uint64_t total;         /* requests due over the run */
	uint64_t scheduled;     /* of them, found due so far */
	uint64_t sent, replies, non_2xx, finished; /* finished: replied or failed */
	uint64_t errors[E_KINDS];
	uint64_t reconnects, unsolicited;
	uint64_t waits;         /* the loop's sleeps (calls that may sleep), over the schedule and the drain */
	int64_t last_finish_ns;
	struct lag *lag;
	struct hist *corrected, *uncorrected;
	struct reqlog *requests; /* --requests-out: every request's latency, NULL without it */
	FILE *requests_file;
	char buf[READ_BUFFER];
} run;

/* Request n of the run is due n/R after start: start + n x (1e9/R) ns, to the nearest nanosecond. */
static int64_t due_ns(int64_t start, uint64_t n, double ns_per_request)
{
	return start + (int64_t)llround((double)n * ns_per_request);
}

/* When request k of connection index is due: it is request k x C + index of the run. */
static int64_t conn_due_ns(size_t index, uint64_t k)
{
	return due_ns(run.t0, k * (uint64_t)connections + index, run.ns_per_request);
}

static void watch(size_t index, bool write)
{
	struct conn *c = &run.conns[index];
	if (c->want_write == write)
		return;
	struct epoll_event ev = { .events = EPOLLIN | (write ? EPOLLOUT : 0u), .data.u32 = (uint32_t)index };
	if (epoll_ctl(run.epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
		fail("epoll_ctl(MOD): %s", strerror(errno));
	c->want_write = write;
}

static void finish(int64_t now)
{
	run.finished++;
	if (now > run.last_finish_ns)
		run.last_finish_ns = now;
}

static void close_conn(struct conn *c)
{
	if (c->fd >= 0)
		close(c->fd); /* also leaves the epoll set */
	c->fd = -1;
	c->state = C_DOWN;
	c->want_write = false;
	c->in_body = false;
	c->head_len = 0;
}

/* The request in flight failed: one error of its kind, the connection closed. */
static void fail_request(struct conn *c, enum error_kind kind, int64_t now)
{
	run.errors[kind]++;
	finish(now);
	close_conn(c);
}

/* Starts a non-blocking connect; false (and errno) when it fails at once. */
static bool start_connect(size_t index)
{
	struct conn *c = &run.conns[index];
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&run.addr, sizeof(run.addr)) < 0 && errno != EINPROGRESS) {
		int saved = errno;
		close(fd);
		errno = saved;
		return false;
	}
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)index };
	if (epoll_ctl(run.epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
		fail("epoll_ctl(ADD): %s", strerror(errno));
	c->fd = fd;
	c->state = C_CONNECTING;
	c->want_write = true;
	return true;
}

static void write_request(size_t index, int64_t now)
{
	struct conn *c = &run.conns[index];
	while (c->written < run.request_len) {
		ssize_t n = send(c->fd, run.request + c->written, run.request_len - c->written, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				watch(index, true);
				return;
			}
			fail_request(c, E_WRITE, now);
			return;
		}
		c->written += (size_t)n;
	}
	if (c->want_write)
		watch(index, false);
}

/* Sends the connection's next due request, opening the connection first if it is closed. */
static void send_next(size_t index, int64_t now)
{
	struct conn *c = &run.conns[index];
	while (c->next < c->due) {
		if (c->state == C_DOWN) {
			if (start_connect(index))
				return; /* sent when connected */
			/* Refused at once: the request it was for fails; the next one tries again. */
			c->next++;
			run.errors[E_CONNECT]++;
			finish(now);
			continue;
		}
		if (c->state != C_IDLE)
			return;
		c->intended_ns = conn_due_ns(index, c->next);
		c->sent_ns = now;
		c->next++;
		c->written = 0;
		c->state = C_BUSY;
		run.sent++;
		write_request(index, now);
		return;
	}
}

/* ---- replies ------------------------------------------------------------------------------------------ */

/* A Content-Length value, p[0..eol): digits after optional white space; false when there are none or they
 * overflow. */
static bool parse_length(const char *p, const char *eol, uint64_t *length)
{
	while (p < eol && (*p == ' ' || *p == '\t'))
		p++;
	if (p == eol || *p < '0' || *p > '9')
		return false;
	*length = 0;
	while (p < eol && *p >= '0' && *p <= '9') {
		if (*length > (UINT64_MAX - 9) / 10)
			return false;
		*length = *length * 10 + (uint64_t)(*p++ - '0');
	}
	return true;
}

/* Parses a complete reply head; false when it is not one this generator reads. */
static bool parse_head(struct conn *c, const char *head, size_t len)
{
	if (len < 12 || memcmp(head, "HTTP/1.", 7) != 0 || head[8] != ' ')
		return false;
	if (head[9] < '1' || head[9] > '5' || head[10] < '0' || head[10] > '9' || head[11] < '0' || head[11] > '9')
		return false;
	c->status = (head[9] - '0') * 100 + (head[10] - '0') * 10 + (head[11] - '0');
	c->closes = head[7] == '0'; /* HTTP/1.0 closes unless it says keep-alive */
	bool have_length = false;
	uint64_t length = 0;
	const char *end = head + len;
	for (const char *line = memchr(head, '\n', len); line && line + 1 < end;) {
		line++;
		const char *eol = memchr(line, '\n', (size_t)(end - line));
		if (!eol)
			break;
		size_t n = (size_t)(eol - line);
		static const char cl[] = "content-length:", conn_hdr[] = "connection:", te[] = "transfer-encoding:";
		if (n > sizeof(cl) - 1 && strncasecmp(line, cl, sizeof(cl) - 1) == 0) {
			if (!parse_length(line + sizeof(cl) - 1, eol, &length))
				return false;
			have_length = true;
		} else if (n > sizeof(conn_hdr) - 1 && strncasecmp(line, conn_hdr, sizeof(conn_hdr) - 1) == 0) {
			const char *v = line + sizeof(conn_hdr) - 1;
			size_t vn = (size_t)(eol - v);
			if (memmem(v, vn, "close", 5) || memmem(v, vn, "Close", 5))
				c->closes = true;
			else if (memmem(v, vn, "eep-alive", 9))
				c->closes = false;
		} else if (n > sizeof(te) - 1 && strncasecmp(line, te, sizeof(te) - 1) == 0) {
			return false; /* chunked: not read here */
		}
		line = eol;
	}
	if (!have_length && c->status != 204 && c->status != 304)
		return false;
	c->body_left = have_length ? length : 0;
	c->in_body = true;
	return true;
}

/* A reply is complete: its latencies recorded, the connection free for the next due request. */
static void complete(size_t index, int64_t now)
{
	struct conn *c = &run.conns[index];
	c->in_body = false;
	run.replies++;
	if (c->status < 200 || c->status > 299)
		run.non_2xx++;
	hist_record(run.corrected, (uint64_t)(now - c->intended_ns));
	hist_record(run.uncorrected, (uint64_t)(now - c->sent_ns));
	if (run.requests) /* the one in flight, request next - 1 of this connection, is request n of the run */
		reqlog_reply(run.requests, (c->next - 1) * (uint64_t)connections + index, now - c->intended_ns);
	finish(now);
	if (c->closes) {
		close_conn(c);
		run.reconnects++;
	} else {
		c->state = C_IDLE;
	}
}

static const char *find_head_end(const char *p, size_t n)
{
	const char *e = memmem(p, n, "\r\n\r\n", 4);
	return e ? e + 4 : NULL;
}

/* A head split over reads: gathers it in c->head, up to its end, and parses it there.  Returns the bytes of
 * p[0..n) it took, or -1 when the request failed (a head too long, or not one this generator reads). */
static ssize_t gather_head(struct conn *c, const char *p, size_t n, int64_t now)
{
	if (!c->head && !(c->head = malloc(HEAD_MAX)))
		fail("out of memory");
	size_t room = HEAD_MAX - c->head_len;
	size_t take = n < room ? n : room;
	size_t from = c->head_len > 3 ? c->head_len - 3 : 0;
	memcpy(c->head + c->head_len, p, take);
	c->head_len += take;
	const char *e = find_head_end(c->head + from, c->head_len - from);
	if (e) {
		size_t head_len = (size_t)(e - c->head);
		size_t used = take - (c->head_len - head_len);
		c->head_len = 0;
		if (!parse_head(c, c->head, head_len)) {
			fail_request(c, E_PARSE, now);
			return -1;
		}
		return (ssize_t)used;
	}
	if (c->head_len == HEAD_MAX) {
		fail_request(c, E_PARSE, now);
		return -1;
	}
	return (ssize_t)take;
}

/* Feeds bytes read to the reply parser; false when the connection was closed for an error. */
static bool feed(size_t index, const char *p, size_t n, int64_t now)
{
	struct conn *c = &run.conns[index];
	const char *end = p + n;
	while (p < end) {
		if (c->state != C_BUSY) {
			/* Bytes with no request in flight: no request of the run failed, the connection closes. */
			run.unsolicited++;
			close_conn(c);
			return false;
		}
		if (c->in_body) {
			uint64_t take = (uint64_t)(end - p) < c->body_left ? (uint64_t)(end - p) : c->body_left;
			p += take;
			c->body_left -= take;
			if (c->body_left == 0) {
				complete(index, now);
				if (c->state == C_DOWN)
					return false;
			}
			continue;
		}
		if (c->head_len == 0) {
			const char *e = find_head_end(p, (size_t)(end - p));
			if (e) {
				if (!parse_head(c, p, (size_t)(e - p))) {
					fail_request(c, E_PARSE, now);
					return false;
				}
				p = e;
				continue;
			}
		}
		ssize_t used = gather_head(c, p, (size_t)(end - p), now);
		if (used < 0)
			return false;
		p += used;
	}
	return true;
}

static void on_readable(size_t index, int64_t now)
{
	struct conn *c = &run.conns[index];
	ssize_t n = recv(c->fd, run.buf, sizeof(run.buf), 0);
	if (n > 0) {
		feed(index, run.buf, (size_t)n, now);
		return;
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (c->state == C_BUSY) {
		fail_request(c, n == 0 ? E_CLOSED : E_READ, now);
	} else {
		close_conn(c); /* an idle keep-alive connection closed by the server */
		run.reconnects++;
	}
}

static void on_event(size_t index, uint32_t events, int64_t now)
{
	struct conn *c = &run.conns[index];
	if (c->fd < 0)
		return; /* closed earlier in this batch */
	if (c->state == C_CONNECTING) {
		if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
			return;
		int err = 0;
		socklen_t len = sizeof(err);
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
			/* The due request it was opened for fails; the next one due tries again. */
			close_conn(c);
			if (c->next < c->due) {
				c->next++;
				run.errors[E_CONNECT]++;
				finish(now);
			}
		} else {
			c->state = C_IDLE;
			watch(index, false);
			run.reconnects++;
		}
		send_next(index, now);
		return;
	}
	if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
		on_readable(index, now);
	if (c->state == C_BUSY && c->written < run.request_len && (events & EPOLLOUT))
		write_request(index, now);
	if (c->state == C_IDLE || c->state == C_DOWN)
		send_next(index, now);
}

/* ---- the schedule ---------------------------------------------------------------------------------- */

/* Marks every request due by now; a due request whose connection is free goes out at once. */
static void schedule(int64_t now)
{
	while (run.scheduled < run.total) {
		uint64_t n = run.scheduled;
		int64_t due_at = due_ns(run.t0, n, run.ns_per_request);
		if (due_at > now)
			break;
		size_t index = (size_t)(n % (uint64_t)connections);
		struct conn *c = &run.conns[index];
		run.scheduled++;
		c->due++;
		lag_record(run.lag, now - due_at);
		if ((c->state == C_IDLE || c->state == C_DOWN) && c->next + 1 == c->due)
			send_next(index, now);
	}
}

static void check_timeouts(int64_t now)
{
	int64_t limit = (int64_t)(timeout_s * 1e9);
	for (long i = 0; i < connections; i++) {
		struct conn *c = &run.conns[i];
		if (c->state == C_BUSY && now - c->sent_ns > limit) {
			fail_request(c, E_TIMEOUT, now);
			send_next((size_t)i, now);
		} else if (c->state == C_CONNECTING && c->next < c->due &&
			   now - conn_due_ns((size_t)i, c->next) > limit) {
			c->next++;
			fail_request(c, E_CONNECT, now);
			send_next((size_t)i, now);
		}
	}
}

/* Sleeps until an event or the deadline. */
static int wait_until(struct epoll_event *events, int64_t deadline, int64_t now)
{
	if (run.use_timerfd) {
		int timeout_ms = -1;
		if (deadline <= now) {
			timeout_ms = 0;
		} else if (deadline != run.timer_armed_ns) {
			struct itimerspec its = { .it_value = { .tv_sec = deadline / 1000000000LL,
								 .tv_nsec = deadline % 1000000000LL } };
			if (timerfd_settime(run.timerfd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
				fail("timerfd_settime: %s", strerror(errno));
			run.timer_armed_ns = deadline;
		}
		return epoll_wait(run.epfd, events, MAX_EVENTS, timeout_ms);
	}
	int64_t wait = deadline > now ? deadline - now : 0;
	struct timespec ts = { .tv_sec = wait / 1000000000LL, .tv_nsec = wait % 1000000000LL };
	return epoll_pwait2(run.epfd, events, MAX_EVENTS, &ts, NULL);
}

static void on_signal(int sig)
{
	(void)sig;
	interrupted = 1;
}

static void setup_timer(void)
{
	bool want_timerfd = strcmp(timer_mode, "timerfd") == 0;
	if (!want_timerfd) {
		struct epoll_event ev;
		struct timespec zero = { 0 };
		if (epoll_pwait2(run.epfd, &ev, 1, &zero, NULL) < 0 && errno == ENOSYS) {
			if (strcmp(timer_mode, "epoll_pwait2") == 0)
				usage_error("--timer epoll_pwait2: this kernel has no epoll_pwait2 (use --timer timerfd)");
			want_timerfd = true;
		}
	}
	run.use_timerfd = want_timerfd;
	if (!want_timerfd)
		return;
	run.timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (run.timerfd < 0)
		fail("timerfd_create: %s", strerror(errno));
	struct epoll_event ev = { .events = EPOLLIN, .data.u32 = TIMER_TOKEN };
	if (epoll_ctl(run.epfd, EPOLL_CTL_ADD, run.timerfd, &ev) < 0)
		fail("epoll_ctl(ADD timerfd): %s", strerror(errno));
}

/* Opens every connection before the schedule starts; exits 1 when one cannot be opened. */
static void open_connections(void)
{
	for (long i = 0; i < connections; i++)
		if (!start_connect((size_t)i))
			fail("cannot connect to %s:%ld: %s", host, port, strerror(errno));
	long pending = connections;
	double bound_s = timeout_s > 10 ? timeout_s : 10;
	int64_t deadline = now_ns() + (int64_t)(bound_s * 1e9);
	struct epoll_event events[MAX_EVENTS];
	while (pending > 0) {
		int64_t now = now_ns();
		if (now >= deadline)
			fail("%ld of %ld connections to %s:%ld not open after %g s", pending, connections, host, port,
			     bound_s);
		if (interrupted)
			fail("interrupted while connecting");
		int n = epoll_wait(run.epfd, events, MAX_EVENTS, (int)((deadline - now) / 1000000) + 1);
		if (n < 0 && errno != EINTR)
			fail("epoll_wait: %s", strerror(errno));
		for (int i = 0; i < n; i++) {
			uint32_t index = events[i].data.u32;
			if (index == TIMER_TOKEN)
				continue;
			struct conn *c = &run.conns[index];
			if (c->state != C_CONNECTING)
				continue;
			int err = 0;
			socklen_t len = sizeof(err);
			if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
				err = errno;
			if (err)
				fail("cannot connect to %s:%ld: %s", host, port, strerror(err));
			c->state = C_IDLE;
			watch(index, false);
			pending--;
		}
	}
}

/* ---- output -------------------------------------------------------------------------------------------- */

static void print_latency(const char *name, const struct hist *h)
{
	static const struct { const char *key; double pct; } points[] = {
		{ "p50", 50 }, { "p90", 90 }, { "p99", 99 }, { "p99.9", 99.9 },
	};
	printf("\"%s\":{", name);
	for (size_t i = 0; i < sizeof(points) / sizeof(points[0]); i++)
		printf("\"%s\":%.3f,", points[i].key, (double)hist_value_at(h, points[i].pct) / 1e3);
	printf("\"max\":%.3f,\"min\":%.3f,\"mean\":%.3f,\"count\":%" PRIu64 ",\"saturated\":%" PRIu64 "}",
	       (double)hist_max(h) / 1e3, (double)hist_min(h) / 1e3, hist_mean(h) / 1e3, hist_count(h),
	       hist_saturated(h));
}

static void print_json_string(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			printf("\\%c", ch);
		else if (ch < 0x20)
			printf("\\u%04x", ch);
		else
			putchar(ch);
	}
	putchar('"');
}

/* The time the achieved rate is over: from t0 to the last reply when every request finished (at least
 * --duration), else to the end of the run. */
static double achieved_span_s(int64_t end)
{
	bool all_done = run.finished == run.total && !interrupted;
	int64_t span = all_done ? run.last_finish_ns - run.t0 : end - run.t0;
	double elapsed_s = (double)span / 1e9;
	if (elapsed_s < duration_s && all_done)
		elapsed_s = duration_s;
	return elapsed_s;
}

static void print_settings(long fd_limit)
{
	printf("{\"program\":\"openload\",\"target\":{\"host\":");
	print_json_string(host);
	printf(",\"port\":%ld,\"path\":", port);
	print_json_string(path);
	printf("},\"connections\":%ld,\"duration_s\":%g,\"timeout_s\":%g,\"timer\":\"%s\",\"timer_slack_us\":%ld,"
	       "\"batch_us\":%ld,\"fd_limit\":%ld,",
	       connections, duration_s, timeout_s, run.use_timerfd ? "timerfd" : "epoll_pwait2", timer_slack_us,
	       batch_us, fd_limit);
	printf("\"interrupted\":%s,", interrupted ? "true" : "false");
}

/* Every request due, as replies and errors by kind: also those never sent and those never answered. */
static void print_counts(void)
{
	uint64_t unsent = 0, unanswered = 0;
	for (long i = 0; i < connections; i++) {
		const struct conn *c = &run.conns[i];
		unsent += c->due - c->next;
		if (c->state == C_BUSY)
			unanswered++; /* a connecting one's request is still among the unsent */
	}
	printf("\"requests\":%" PRIu64 ",\"sent\":%" PRIu64 ",\"replies\":%" PRIu64 ",\"non_2xx\":%" PRIu64
	       ",\"reconnects\":%" PRIu64 ",\"unsolicited\":%" PRIu64 ",",
	       run.scheduled, run.sent, run.replies, run.non_2xx, run.reconnects, run.unsolicited);
	printf("\"errors\":{");
	for (int k = 0; k < E_KINDS; k++)
		printf("\"%s\":%" PRIu64 ",", error_names[k], run.errors[k]);
	printf("\"unsent\":%" PRIu64 ",\"unanswered\":%" PRIu64 "},", unsent, unanswered);
}

/* lagged (the generator's fault): any late send, the share of sends late, and each percentile they could move. */
static void print_lagged(void)
{
	printf("\"lagged\":{\"raised\":%s,\"late_sends\":%" PRIu64 ",\"checked_sends\":%" PRIu64
	       ",\"late_share\":%.6f,",
	       lag_late(run.lag) > 0 ? "true" : "false", lag_late(run.lag), lag_checked(run.lag),
	       lag_late_share(run.lag));
	for (size_t i = 0; i < sizeof(LAG_PERCENTILES) / sizeof(LAG_PERCENTILES[0]); i++)
		printf("\"%s\":%s,", LAG_PERCENTILES[i].key,
		       lag_could_move(run.lag, LAG_PERCENTILES[i].one_in) ? "true" : "false");
	printf("\"max_lag_us\":%.3f,\"mean_lag_us\":%.3f,\"threshold_us\":%ld},", (double)lag_max_ns(run.lag) / 1e3,
	       lag_mean_ns(run.lag) / 1e3, lag_threshold_us);
}

/* lagged (the generator's fault) and overloaded (the server's), with the figures behind them. */
static void print_flags(double achieved_share)
{
	print_lagged();
	printf("\"overloaded\":{\"raised\":%s,\"achieved_share\":%.6f,\"tolerance\":%g},",
	       achieved_share < 1.0 - OVERLOAD_TOLERANCE ? "true" : "false", achieved_share, OVERLOAD_TOLERANCE);
}

/* The generator's own CPU time over the load (ru0 to ru1) against the wall-clock time of the run, and how often
 * its loop waited (each wait a possible sleep and wakeup) per reply. */
static void print_cpu(const struct rusage *ru0, const struct rusage *ru1, double wall)
{
	double user = cpu_seconds(ru1, true) - cpu_seconds(ru0, true);
	double sys = cpu_seconds(ru1, false) - cpu_seconds(ru0, false);
	printf("\"cpu\":{\"user_s\":%.6f,\"system_s\":%.6f,\"busy_share\":%.6f,\"per_reply_us\":%.3f,"
	       "\"waits\":%" PRIu64 ",\"waits_per_reply\":%.4f}}\n",
	       user, sys, wall > 0 ? (user + sys) / wall : 0.0,
	       run.replies ? (user + sys) * 1e6 / (double)run.replies : 0.0, run.waits,
	       run.replies ? (double)run.waits / (double)run.replies : 0.0);
}

/* The one JSON object on stdout. */
static void report(int64_t end, const struct rusage *ru0, const struct rusage *ru1, long fd_limit)
{
	double elapsed_s = achieved_span_s(end);
	double achieved = elapsed_s > 0 ? (double)run.replies / elapsed_s : 0;
	double wall = (double)(end - run.t0) / 1e9;
	print_settings(fd_limit);
	printf("\"offered_rate\":%.3f,\"achieved_rate\":%.3f,\"elapsed_s\":%.6f,\"wall_s\":%.6f,", rate, achieved,
	       elapsed_s, wall);
	printf("\"schedule\":{\"clock\":\"CLOCK_MONOTONIC\",\"start_ns\":%" PRId64 ",\"end_ns\":%" PRId64 "},", run.t0,
	       run.t_end);
	print_counts();
	print_latency("latency_us", run.corrected);
	putchar(',');
	print_latency("uncorrected_latency_us", run.uncorrected);
	printf(",\"histogram\":{\"unit\":\"ns\",\"significant_digits\":3,\"relative_precision\":%.6g,"
	       "\"highest_s\":%g},",
	       1.0 / HIST_HALF, (double)HIST_HIGHEST / 1e9);
	print_flags(achieved / rate);
	print_cpu(ru0, ru1, wall);
}

/* ---- the run ------------------------------------------------------------------------------------------ */

/* Exits 2 when the connections need more descriptors than the limit allows. */
static void check_fd_limit(long fd_limit)
{
	if (connections <= fd_limit - RESERVED_FDS)
		return;
	fprintf(stderr,
		"openload: %ld connections need %ld descriptors; this host allows %ld per process: "
		"use --connections %ld or fewer\n",
		connections, connections + RESERVED_FDS, fd_limit, fd_limit - RESERVED_FDS);
	exit(2);
}

/* SIGINT and SIGTERM end the run early (it still reports), a reset connection is an EPIPE and not a death,
 * and the kernel may end a sleep at most --timer-slack-us late. */
static void install_signals_and_slack(void)
{
	struct sigaction sa = { .sa_handler = on_signal };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (prctl(PR_SET_TIMERSLACK, (unsigned long)timer_slack_us * 1000, 0, 0, 0) < 0)
		fail("prctl(PR_SET_TIMERSLACK): %s", strerror(errno));
}

/* The request, the schedule's pace and length, the connections (closed), the histograms, the epoll set. */
static void prepare_run(void)
{
	run.addr.sin_family = AF_INET;
	run.addr.sin_port = htons((uint16_t)port);
	inet_pton(AF_INET, host, &run.addr.sin_addr);
	int len = snprintf(run.request, sizeof(run.request), "GET %s HTTP/1.1\r\nHost: %s:%ld\r\n\r\n", path, host,
			   port);
	if (len < 0 || (size_t)len >= sizeof(run.request))
		usage_error("--path is too long (at most %zu bytes)", sizeof(run.request) - 64);
	run.request_len = (size_t)len;
	run.ns_per_request = 1e9 / rate;
	double total = ceil(rate * duration_s);
	run.total = (uint64_t)total;
	run.timerfd = -1;
	run.conns = calloc((size_t)connections, sizeof(*run.conns));
	run.corrected = hist_create();
	run.uncorrected = hist_create();
	run.lag = lag_create((int64_t)lag_threshold_us * 1000);
	if (!run.conns || !run.corrected || !run.uncorrected || !run.lag)
		fail("out of memory for %ld connections", connections);
	for (long i = 0; i < connections; i++)
		run.conns[i].fd = -1;
	run.epfd = epoll_create1(EPOLL_CLOEXEC);
	if (run.epfd < 0)
		fail("epoll_create1: %s", strerror(errno));
}

/* --requests-out: the file made and a slot for every request of the run, before the schedule starts. */
static void prepare_requests_out(void)
{
	if (!*requests_out)
		return;
	run.requests_file = fopen(requests_out, "wb");
	if (!run.requests_file)
		fail("--requests-out %s: %s", requests_out, strerror(errno));
	run.requests = reqlog_create(run.total);
	if (!run.requests)
		fail("--requests-out: cannot allocate %" PRIu64 " MB for %" PRIu64 " requests: %s",
		     run.total * sizeof(int64_t) >> 20, run.total, strerror(errno));
}

/* Request n of the run's due time, for the --requests-out file. */
static int64_t request_due_ns(uint64_t n)
{
	return due_ns(run.t0, n, run.ns_per_request);
}

/* The --requests-out file: a record for every request due (run.scheduled), after the drain. */
static void write_requests_out(void)
{
	if (!run.requests)
		return;
	if (reqlog_write(run.requests, run.requests_file, run.scheduled, request_due_ns) < 0 ||
	    fclose(run.requests_file) != 0)
		fail("--requests-out %s: %s", requests_out, strerror(errno));
	run.requests_file = NULL;
	reqlog_destroy(run.requests);
	run.requests = NULL;
}

/* When the loop must wake at the latest: the next housekeeping, the drain's end or --batch-us after the next
 * request is due.
 *
 * Batching only ever delays: the loop sleeps until the next request has been due --batch-us, then schedule()
 * sends it and every other request due by then, so one wakeup serves the requests due within that window.
 * No request goes out before its due time.  Sending early was rejected: it would change the load itself (the
 * server would see bursts ahead of the schedule), and a request sent before it was due would have its latency
 * counted from a due time later than its send, shortened or even negative; clamping that to the send time
 * would hide it.  Sent late instead, a request's latency still counts from its due time, so the delay the
 * window adds (at most --batch-us, its mean in `lagged`) is in the corrected latency, never hidden. */
static int64_t next_deadline(int64_t next_housekeeping)
{
	int64_t deadline = next_housekeeping < run.drain_end ? next_housekeeping : run.drain_end;
	if (run.scheduled < run.total) {
		int64_t wake_at = due_ns(run.t0, run.scheduled, run.ns_per_request) + batch_us * 1000;
		if (wake_at < deadline)
			deadline = wake_at;
	}
	return deadline;
}

static void on_timer(void)
{
	uint64_t expirations;
	if (read(run.timerfd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
		fail("reading the timerfd: %s", strerror(errno));
	run.timer_armed_ns = 0;
}

/* The schedule from t0: requests come due, replies are read, until all are done, the drain ends or a signal. */
static void run_schedule(void)
{
	run.t0 = now_ns();
	run.t_end = run.t0 + (int64_t)(duration_s * 1e9);
	run.drain_end = run.t_end + (int64_t)(timeout_s * 1e9);
	int64_t next_housekeeping = run.t0 + HOUSEKEEPING_NS;
	struct epoll_event events[MAX_EVENTS];
	int64_t now = run.t0;
	while (!interrupted) {
		schedule(now);
		if (now >= next_housekeeping) {
			check_timeouts(now);
			next_housekeeping = now + HOUSEKEEPING_NS;
		}
		if (run.scheduled == run.total && run.finished >= run.total)
			break;
		if (now >= run.drain_end)
			break;
		int n = wait_until(events, next_deadline(next_housekeeping), now);
		run.waits++;
		if (n < 0 && errno != EINTR)
			fail("waiting: %s", strerror(errno));
		now = now_ns();
		for (int i = 0; i < n; i++) {
			if (events[i].data.u32 == TIMER_TOKEN)
				on_timer();
			else
				on_event(events[i].data.u32, events[i].events, now);
		}
	}
}

static void free_run(void)
{
	for (long i = 0; i < connections; i++) {
		close_conn(&run.conns[i]);
		free(run.conns[i].head);
	}
	free(run.conns);
	hist_destroy(run.corrected);
	hist_destroy(run.uncorrected);
	lag_destroy(run.lag);
	if (run.timerfd >= 0)
		close(run.timerfd);
	close(run.epfd);
}

int main(int argc, char **argv)
{
	parse_args(argc, argv);
	long fd_limit = raise_fd_limit("openload", FD_RAISE_OR_EXIT);
	check_fd_limit(fd_limit);
	install_signals_and_slack();
	prepare_run();
	prepare_requests_out();
	setup_timer();
	open_connections();

	struct rusage ru0, ru1;
	getrusage(RUSAGE_SELF, &ru0);
	run_schedule();
	int64_t end = now_ns();
	getrusage(RUSAGE_SELF, &ru1);
	write_requests_out();
	report(end, &ru0, &ru1, fd_limit);
	free_run();
	return 0;
}
