/*
 * ephttpd - the HTTP server of epollbench, our version of dphttpd from the
 * 2002 Linux epoll scalability study.
 *
 * What it is: a server that answers every GET with 200 and a body of
 * --msgsize bytes (128 by default, as dphttpd), and HEAD with the same head
 * and no body, so that what a load test measures is the cost of event
 * notification and of the socket calls around it, not of producing content.
 *
 * The model: one single-threaded event loop per process (--workers N forks N,
 * each with its own SO_REUSEPORT listener; the parent only waits and sums
 * their stats).  The loop waits through images/ev/ev.h and never knows which
 * backend runs, so every handler is right for level- and edge-triggered
 * delivery alike: read until a short read or EAGAIN (until EOF when the event
 * said hang-up), write until done or EAGAIN, then wait for EV_WRITE alone
 * until the backlog is flushed.  No descriptor holds the loop for long: a
 * read that fills the buffer ends a connection's turn, and the listener's
 * turn ends after ACCEPTS_PER_TURN connections.  What a turn left goes on the
 * loop's own ready list, served after the next wait, which then does not
 * block; an edge-triggered backend would not report it again.  In the common
 * case a keep-alive request costs one recv and one send: a short read means
 * the socket is drained, and all requests pipelined into one read are
 * answered with one send (sendmsg when there are several) of prebuilt
 * responses.  A connection's state is a slot in an array indexed by its
 * descriptor; nothing is allocated per request.  The loop waits without a
 * time limit and keeps no timers, so an idle connection, or a dead one that
 * sent half a request, costs nothing.
 *
 * A response that ends the connection (an error, or a 200 to "Connection:
 * close" or to HTTP/1.0 without keep-alive) is followed by our FIN, and input
 * is then read and dropped until the peer closes: closing with input unread
 * would send a reset, which can destroy the response before the client has
 * read it.
 *
 * What it does not do: serve files (every target gets the same body), accept
 * request bodies (a GET or HEAD with one gets 400, other methods 405), time
 * anything out (a client that never finishes its request, or never closes
 * after our FIN, holds its connection until it closes it), TLS, host names in
 * --bind, or Host header checks.
 *
 * Output: JSON lines on stdout - "listening" once connections are accepted,
 * a "snapshot" per worker on SIGUSR1, and on SIGTERM or SIGINT exactly one
 * "stats" line, then exit 0.  Errors go to stderr.  wait_calls and events
 * count the waits that returned connection or listener events (and any that
 * returned nothing): the wakeups our own signals cause are left out, so that a
 * snapshot of an idle server shows no wakeup at all.  reads_capped and
 * accepts_capped count the turns a cap ended, ready_served the turns the
 * ready list gave.  peak_open of several workers is the sum of their peaks,
 * an upper bound of the true peak.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ev.h"
#include "http.h"

#define DEFAULT_BACKEND "epoll"
#define DEFAULT_BIND    "127.0.0.1" /* loopback: with host networking a wildcard would expose it */
#define DEFAULT_PORT    8080
#define DEFAULT_BACKLOG 2048
#define DEFAULT_MSGSIZE 128
#define DEFAULT_WORKERS 1
#define MAX_MSGSIZE     (64L << 20)
#define MAX_WORKERS     256

/* One read asks for far more than a request head, so a short read means drained.
 * It is also a connection's share of a turn: a read that fills it ends the turn. */
#define READ_SIZE 65536
/* Connections accepted in one turn of the listener. */
#define ACCEPTS_PER_TURN 64
/* Reads in one turn of a lingering connection, which reads past short ones. */
#define LINGER_READS_PER_TURN 4
/* Events taken from one wait. */
#define WAIT_BATCH 1024
/* iovecs in one sendmsg: IOV_MAX on Linux. */
#define WRITE_BATCH 1024
/* First allocation for an unfinished request head kept between reads. */
#define STASH_MIN 256

struct options {
	const char *backend;
	const char *bind;
	int port;
	int backlog;
	long msgsize;
	int workers;
	const char *ready_file;
};

/* The responses, built once; a connection's output queue only counts them. */
enum response { RESPONSE_NONE, RESPONSE_OK, RESPONSE_OK_CLOSE, RESPONSE_HEAD, RESPONSE_HEAD_CLOSE, RESPONSE_400,
		RESPONSE_405, RESPONSE_431, RESPONSE_COUNT };

struct prebuilt {
	char *bytes;
	size_t len;
	int status;
};

static struct prebuilt responses[RESPONSE_COUNT];

/* Keep-alive responses of one kind in a row, in a connection's output queue. */
struct run {
	uint32_t count;
	uint8_t which; /* RESPONSE_OK or RESPONSE_HEAD */
};

struct conn {
	bool open;
	bool awaiting_write; /* watching EV_WRITE only, not reading, until the backlog is flushed */
	bool peer_closed;    /* read EOF: close once the queue is flushed */
	bool lingering;      /* sent the final response and FIN: discard input until the peer closes */
	uint8_t final;       /* the response after which the connection ends, or RESPONSE_NONE */
	bool final_sent;
	uint16_t stash_len;  /* an unfinished request head, < HTTP_HEAD_MAX bytes */
	uint16_t stash_cap;
	uint32_t first_run;  /* the queue: runs[first_run] and the next ones, ahead of final */
	uint32_t runs;
	uint32_t more_cap;   /* runs more_runs has room for */
	size_t sent;         /* bytes of the first queued response already written */
	char *stash;
	/* The runs are in one_run as long as one will do (every request a GET, or
	 * every one a HEAD); a pipeline mixing the two moves them to more_runs,
	 * allocated then and kept until the connection closes. */
	struct run one_run;
	struct run *more_runs;
};

struct worker_stats {
	uint64_t accepted, refused, closed, open, peak_open;
	uint64_t requests, responses_200, responses_4xx;
	uint64_t wait_calls, events;
	uint64_t reads_capped, accepts_capped, ready_served;
	double user_cpu_s, sys_cpu_s;
	int32_t pid;
};

/* A descriptor whose turn a cap ended, with the events it is to be served for. */
struct ready_entry {
	int fd; /* -1: closed since */
	unsigned events;
};

struct server {
	struct ev_loop *loop;
	int listen_fd;
	int wake_fd;    /* read end of the pipe the signal handlers write */
	int reserve_fd; /* /dev/null, given up to accept-and-close when out of descriptors */
	int max_fds;
	bool reported_watch_failure;
	struct conn *conns;
	/* The ready list.  A descriptor is on it at most once (ready_slot[fd] is
	 * its index, or -1), but while the list is served an entry already served
	 * holds its place until the end of the round: room for twice max_fds. */
	struct ready_entry *ready;
	int ready_count;
	int *ready_slot;
	struct worker_stats stats;
	char in[READ_SIZE];
};

static volatile sig_atomic_t stop_requested, snapshot_requested;
static int wake_write_fd = -1;
static sigset_t unblocked_signals;

/* One line on stderr; usage_error then exits 2 (bad usage), die exits 1 (anything else). */
static void print_error(const char *fmt, va_list ap)
{
	fputs("ephttpd: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

static void usage_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	print_error(fmt, ap);
	va_end(ap);
	exit(2);
}

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	print_error(fmt, ap);
	va_end(ap);
	exit(1);
}

/*
 * A flag alone could be missed: a signal landing after the loop tested it but
 * before it blocked in ev_wait would not interrupt that wait.  The byte in the
 * pipe wakes it in any case.
 */
static void wake_loop(void)
{
	int saved = errno;
	if (wake_write_fd >= 0 && write(wake_write_fd, "", 1) < 0) {
		/* a full pipe wakes the loop just as well */
	}
	errno = saved;
}

static void on_stop_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
	wake_loop();
}

static void on_snapshot_signal(int sig)
{
	(void)sig;
	snapshot_requested = 1;
	wake_loop();
}

/* Only so that SIGCHLD ends the parent's sigsuspend; waitpid finds who exited. */
static void on_child_exit(int sig)
{
	(void)sig;
}

static void install_handler(int sig, void (*handler)(int))
{
	/* Without SA_RESTART, so that the signal interrupts ev_wait with EINTR. */
	struct sigaction sa = { .sa_handler = handler };
	sigemptyset(&sa.sa_mask);
	if (sigaction(sig, &sa, NULL) < 0)
		die("sigaction(%d): %s", sig, strerror(errno));
}

/* ---------------------------------------------------------------- responses */

/* body NULL: body_len bytes of 'x'.  with_body false: the head alone, as for HEAD. */
static void build_response(enum response which, int status, const char *reason,
			   const char *extra_headers, const char *body, size_t body_len, bool with_body,
			   bool keep_alive)
{
	char head[256];
	int head_len = snprintf(head, sizeof(head),
				"HTTP/1.1 %d %s\r\nServer: ephttpd\r\nContent-Type: text/plain\r\n%s"
				"Content-Length: %zu\r\nConnection: %s\r\n\r\n",
				status, reason, extra_headers, body_len, keep_alive ? "keep-alive" : "close");
	struct prebuilt *r = &responses[which];
	r->len = (size_t)head_len + (with_body ? body_len : 0);
	r->bytes = malloc(r->len);
	if (!r->bytes)
		die("out of memory for a %zu-byte response (lower --msgsize)", r->len);
	memcpy(r->bytes, head, (size_t)head_len);
	if (with_body && body)
		memcpy(r->bytes + head_len, body, body_len);
	else if (with_body)
		memset(r->bytes + head_len, 'x', body_len);
	r->status = status;
}

static void build_responses(size_t msgsize)
{
	static const char bad_request[] = "malformed request\n";
	static const char bad_method[] = "only GET and HEAD are served\n";
	static const char too_large[] = "request head over 8 KiB\n";
	build_response(RESPONSE_OK, 200, "OK", "", NULL, msgsize, true, true);
	build_response(RESPONSE_OK_CLOSE, 200, "OK", "", NULL, msgsize, true, false);
	build_response(RESPONSE_HEAD, 200, "OK", "", NULL, msgsize, false, true);
	build_response(RESPONSE_HEAD_CLOSE, 200, "OK", "", NULL, msgsize, false, false);
	build_response(RESPONSE_400, 400, "Bad Request", "", bad_request, sizeof(bad_request) - 1, true, false);
	build_response(RESPONSE_405, 405, "Method Not Allowed", "Allow: GET, HEAD\r\n", bad_method,
		       sizeof(bad_method) - 1, true, false);
	build_response(RESPONSE_431, 431, "Request Header Fields Too Large", "", too_large,
		       sizeof(too_large) - 1, true, false);
}

/* ---------------------------------------------------------- the ready list */

/*
 * Ends fd's turn with work left, to be served for events after the next wait.
 * Also where an event for a descriptor already on the list goes, so that it
 * is served once in a round, by the list.
 */
static void make_ready(struct server *s, int fd, unsigned events)
{
	int slot = s->ready_slot[fd];
	if (slot >= 0) {
		s->ready[slot].events |= events;
		return;
	}
	s->ready_slot[fd] = s->ready_count;
	s->ready[s->ready_count++] = (struct ready_entry){ .fd = fd, .events = events };
}

static void forget_ready(struct server *s, int fd)
{
	int slot = s->ready_slot[fd];
	if (slot >= 0) {
		s->ready[slot].fd = -1;
		s->ready_slot[fd] = -1;
	}
}

/* -------------------------------------------------------------- connections */

static void close_conn(struct server *s, int fd)
{
	struct conn *c = &s->conns[fd];
	ev_delete(s->loop, fd);
	close(fd);
	forget_ready(s, fd);
	free(c->stash);
	free(c->more_runs);
	*c = (struct conn){ .open = false };
	s->stats.closed++;
	s->stats.open--;
}

static void admit(struct server *s, int fd)
{
	int err = fd < s->max_fds ? ev_add(s->loop, fd, EV_READ) : -ERANGE;
	if (err < 0) {
		/* -ERANGE is select's FD_SETSIZE: an expected refusal, only counted. */
		if (err != -ERANGE && !s->reported_watch_failure) {
			fprintf(stderr, "ephttpd: %s cannot watch a new connection: %s (refusing such)\n",
				ev_name(s->loop), strerror(-err));
			s->reported_watch_failure = true;
		}
		close(fd);
		s->stats.refused++;
		return;
	}
	s->conns[fd] = (struct conn){ .open = true };
	s->stats.accepted++;
	if (++s->stats.open > s->stats.peak_open)
		s->stats.peak_open = s->stats.open;
}

/*
 * Out of descriptors: give up the reserve to take one connection off the
 * queue and close it.  Leaving it queued would make the listener ready again
 * at once, and the loop would spin.  Returns false when nothing was taken.
 */
static bool refuse_one(struct server *s)
{
	if (s->reserve_fd < 0)
		s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (s->reserve_fd < 0)
		return false;
	close(s->reserve_fd);
	int fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
	if (fd >= 0) {
		close(fd);
		s->stats.refused++;
	}
	s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	return fd >= 0;
}

/* The listener's turn: accepts until the queue is empty, or ACCEPTS_PER_TURN times. */
static void accept_connections(struct server *s)
{
	for (int tries = 0; tries < ACCEPTS_PER_TURN; tries++) {
		int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0) {
			admit(s, fd);
			continue;
		}
		switch (errno) {
		case EINTR:
		case ECONNABORTED:
			continue;
		case EMFILE:
		case ENFILE:
			if (refuse_one(s))
				continue;
			return;
		default:
			/* EAGAIN: the queue is empty.  ENOBUFS, ENOMEM: try at the next wait. */
			return;
		}
	}
	s->stats.accepts_capped++;
	make_ready(s, s->listen_fd, EV_READ);
}

/* ---------------------------------------------------------------- output */

static struct run *runs_of(struct conn *c)
{
	return c->more_runs ? c->more_runs : &c->one_run;
}

/* Queues a keep-alive response (RESPONSE_OK or RESPONSE_HEAD); false when out of memory. */
static bool queue_response(struct conn *c, enum response which)
{
	struct run *runs = runs_of(c);
	uint32_t end = c->first_run + c->runs;
	if (c->runs > 0 && runs[end - 1].which == which) {
		runs[end - 1].count++;
		return true;
	}
	uint32_t cap = c->more_runs ? c->more_cap : 1;
	if (end == cap) {
		uint32_t grown_cap = cap < 4 ? 4 : 2 * cap;
		struct run *grown = realloc(c->more_runs, grown_cap * sizeof(*grown));
		if (!grown)
			return false;
		if (!c->more_runs)
			grown[0] = c->one_run;
		c->more_runs = runs = grown;
		c->more_cap = grown_cap;
	}
	runs[end] = (struct run){ .count = 1, .which = (uint8_t)which };
	c->runs++;
	return true;
}

/* Accounts for n bytes written from the head of the queue. */
static void consume(struct server *s, struct conn *c, size_t n)
{
	struct run *runs = runs_of(c);
	while (n > 0 && c->runs > 0) {
		struct run *r = &runs[c->first_run];
		size_t left = responses[r->which].len - c->sent;
		if (n < left) {
			c->sent += n;
			return;
		}
		n -= left;
		c->sent = 0;
		s->stats.responses_200++;
		if (--r->count == 0) {
			c->first_run++;
			if (--c->runs == 0)
				c->first_run = 0;
		}
	}
	if (n == 0)
		return;
	c->sent += n;
	const struct prebuilt *f = &responses[c->final];
	if (c->sent == f->len) {
		c->final_sent = true;
		c->sent = 0;
		if (f->status == 200)
			s->stats.responses_200++;
		else
			s->stats.responses_4xx++;
	}
}

enum flush_result { FLUSH_DONE, FLUSH_BLOCKED, FLUSH_FAILED };

static enum flush_result flush(struct server *s, int fd, struct conn *c)
{
	while (c->runs > 0 || (c->final != RESPONSE_NONE && !c->final_sent)) {
		struct iovec iov[WRITE_BATCH];
		int count = 0;
		size_t skip = c->sent, total = 0;
		const struct run *runs = runs_of(c);
		for (uint32_t r = c->first_run; r < c->first_run + c->runs && count < WRITE_BATCH; r++) {
			const struct prebuilt *p = &responses[runs[r].which];
			for (uint32_t k = 0; k < runs[r].count && count < WRITE_BATCH; k++) {
				iov[count++] = (struct iovec){ p->bytes + skip, p->len - skip };
				total += p->len - skip;
				skip = 0;
			}
		}
		if (count < WRITE_BATCH && c->final != RESPONSE_NONE) {
			const struct prebuilt *f = &responses[c->final];
			iov[count++] = (struct iovec){ f->bytes + skip, f->len - skip };
			total += f->len - skip;
		}
		/* send and sendmsg skip the VFS layer of write and writev, and send the
		 * iovec copy: a measurable share of a reply's CPU on loopback.  MSG_NOSIGNAL:
		 * a peer's reset is an EPIPE, not a SIGPIPE. */
		ssize_t n = count == 1 ? send(fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL)
				       : sendmsg(fd, &(struct msghdr){ .msg_iov = iov, .msg_iovlen = (size_t)count },
						 MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN ? FLUSH_BLOCKED : FLUSH_FAILED;
		}
		consume(s, c, (size_t)n);
		/* A short write means the socket buffer is full: another would get EAGAIN. */
		if ((size_t)n < total)
			return FLUSH_BLOCKED;
	}
	return FLUSH_DONE;
}

/*
 * A lingering connection's turn: reads and drops input until EAGAIN, and
 * closes on EOF or error.  Not only until a short read: the peer's FIN may
 * have come with the data, and an edge-triggered backend would not announce
 * it again.
 */
static void discard_input(struct server *s, int fd)
{
	for (int reads = 0; reads < LINGER_READS_PER_TURN; reads++) {
		ssize_t n = recv(fd, s->in, sizeof(s->in), 0);
		if (n > 0 || (n < 0 && errno == EINTR))
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		close_conn(s, fd);
		return;
	}
	s->stats.reads_capped++;
	make_ready(s, fd, EV_READ);
}

/* Our FIN after the final response; see "A response that ends the connection" above. */
static void end_after_final(struct server *s, int fd, struct conn *c)
{
	if (c->peer_closed || shutdown(fd, SHUT_WR) < 0) {
		close_conn(s, fd);
		return;
	}
	c->lingering = true;
	discard_input(s, fd);
}

/*
 * Writes what is queued, then ends the connection or waits for EV_WRITE as its
 * state asks.  Returns true when it stays open and may read on.
 */
static bool write_queued(struct server *s, int fd, struct conn *c)
{
	switch (flush(s, fd, c)) {
	case FLUSH_FAILED:
		close_conn(s, fd);
		return false;
	case FLUSH_BLOCKED:
		if (!c->awaiting_write) {
			if (ev_modify(s->loop, fd, EV_WRITE) < 0) {
				close_conn(s, fd);
				return false;
			}
			c->awaiting_write = true;
		}
		return false;
	case FLUSH_DONE:
		break;
	}
	if (c->awaiting_write) {
		if (ev_modify(s->loop, fd, EV_READ) < 0) {
			close_conn(s, fd);
			return false;
		}
		c->awaiting_write = false;
	}
	if (c->final != RESPONSE_NONE) {
		end_after_final(s, fd, c);
		return false;
	}
	if (c->peer_closed) {
		close_conn(s, fd);
		return false;
	}
	return true;
}

/* ---------------------------------------------------------------- input */

/*
 * Queues a response for every complete request in buf, and sets *used to the
 * bytes they took.  Returns false when out of memory.
 */
static bool answer_requests(struct server *s, struct conn *c, const char *buf, size_t len, size_t *used)
{
	size_t at = 0;
	while (at < len) {
		struct http_request req;
		enum http_verdict verdict = http_parse(buf + at, len - at, &req);
		if (verdict == HTTP_INCOMPLETE)
			break;
		s->stats.requests++;
		if ((verdict == HTTP_GET || verdict == HTTP_HEAD) && req.keep_alive) {
			if (!queue_response(c, verdict == HTTP_GET ? RESPONSE_OK : RESPONSE_HEAD))
				return false;
			at += req.head_len;
			continue;
		}
		switch (verdict) {
		case HTTP_GET:
			c->final = RESPONSE_OK_CLOSE;
			break;
		case HTTP_HEAD:
			c->final = RESPONSE_HEAD_CLOSE;
			break;
		case HTTP_BAD_METHOD:
			c->final = RESPONSE_405;
			break;
		case HTTP_HEAD_TOO_LARGE:
			c->final = RESPONSE_431;
			break;
		default:
			c->final = RESPONSE_400;
			break;
		}
		at = len; /* nothing after the last response is read as a request */
	}
	*used = at;
	return true;
}

static bool keep_unfinished(struct conn *c, const char *bytes, size_t n)
{
	if (n > c->stash_cap) {
		size_t cap = c->stash_cap ? c->stash_cap : STASH_MIN;
		while (cap < n)
			cap *= 2;
		char *grown = realloc(c->stash, cap);
		if (!grown)
			return false;
		c->stash = grown;
		c->stash_cap = (uint16_t)cap;
	}
	/* memcpy wants valid pointers even for no bytes, and there is no stash
	 * until a head is first left unfinished. */
	if (n > 0)
		memcpy(c->stash, bytes, n);
	c->stash_len = (uint16_t)n;
	return true;
}

enum read_result {
	READ_DRAINED, /* EAGAIN */
	READ_SHORT,   /* less than asked: drained, unless the peer also hung up (see serve_input) */
	READ_MORE,    /* the buffer filled: there may be more */
	READ_EOF,
	READ_FAILED,
};

/* One read, after the unfinished head kept from the last one; queues the answers. */
static enum read_result read_requests(struct server *s, int fd, struct conn *c)
{
	size_t have = c->stash_len;
	if (have)
		memcpy(s->in, c->stash, have);
	size_t room = sizeof(s->in) - have;
	ssize_t n;
	do
		n = recv(fd, s->in + have, room, 0); /* recv, not read: no VFS layer */
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EAGAIN ? READ_DRAINED : READ_FAILED;
	if (n == 0) {
		c->peer_closed = true;
		return READ_EOF;
	}
	have += (size_t)n;
	size_t used;
	if (!answer_requests(s, c, s->in, have, &used))
		return READ_FAILED;
	if (c->final != RESPONSE_NONE)
		c->stash_len = 0;
	else if (!keep_unfinished(c, s->in + used, have - used))
		return READ_FAILED;
	return (size_t)n < room ? READ_SHORT : READ_MORE;
}

/*
 * A connection's turn of reading.  A short read means the socket is drained,
 * but not that the peer's FIN, come with the last bytes, was seen: an
 * edge-triggered backend will not announce it again.  When the event said
 * hang-up (EV_ERROR), read on to the EOF.  A read that fills the buffer ends
 * the turn, and the ready list gives the next.
 */
static void serve_input(struct server *s, int fd, struct conn *c, unsigned events)
{
	for (;;) {
		enum read_result r = read_requests(s, fd, c);
		if (r == READ_FAILED) {
			close_conn(s, fd);
			return;
		}
		if (!write_queued(s, fd, c))
			return;
		if (r == READ_MORE) {
			s->stats.reads_capped++;
			make_ready(s, fd, EV_READ | (events & EV_ERROR));
			return;
		}
		if (!(r == READ_SHORT && (events & EV_ERROR)))
			return;
	}
}

static void serve(struct server *s, int fd, unsigned events)
{
	struct conn *c = &s->conns[fd];
	if (!c->open)
		return; /* closed earlier in this batch of events */
	if (c->lingering) {
		discard_input(s, fd);
		return;
	}
	if (c->awaiting_write) {
		if (!write_queued(s, fd, c))
			return;
		/* Input was not read while the backlog lasted, and edge-triggered
		 * backends will not announce it again: read it now. */
	} else if (!(events & EV_READ)) {
		return;
	}
	serve_input(s, fd, c, events);
}

static void dispatch(struct server *s, int fd, unsigned events)
{
	if (fd == s->listen_fd)
		accept_connections(s);
	else
		serve(s, fd, events);
}

/*
 * Serves the first due entries of the ready list, those of earlier rounds;
 * the turns they end with work left, and those of this round's events, make
 * the list of the next round.
 */
static void serve_ready(struct server *s, int due)
{
	for (int i = 0; i < due; i++) {
		struct ready_entry e = s->ready[i];
		if (e.fd < 0)
			continue;
		forget_ready(s, e.fd);
		s->stats.ready_served++;
		dispatch(s, e.fd, e.events);
	}
	int kept = 0;
	for (int i = due; i < s->ready_count; i++) {
		struct ready_entry e = s->ready[i];
		if (e.fd < 0)
			continue;
		s->ready_slot[e.fd] = kept;
		s->ready[kept++] = e;
	}
	s->ready_count = kept;
}

/* ---------------------------------------------------------------- stats */

static void take_cpu_times(struct worker_stats *st)
{
	struct rusage ru;
	if (getrusage(RUSAGE_SELF, &ru) == 0) {
		st->user_cpu_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
		st->sys_cpu_s = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
	}
}

static int format_counters(char *buf, size_t size, const struct worker_stats *st)
{
	double per_wait = st->wait_calls ? (double)st->events / (double)st->wait_calls : 0.0;
	return snprintf(buf, size,
			"\"accepted\":%" PRIu64 ",\"refused\":%" PRIu64 ",\"closed\":%" PRIu64
			",\"open\":%" PRIu64 ",\"requests\":%" PRIu64 ",\"responses_200\":%" PRIu64
			",\"responses_4xx\":%" PRIu64 ",\"wait_calls\":%" PRIu64 ",\"events\":%" PRIu64
			",\"events_per_wait\":%.3f,\"peak_open\":%" PRIu64 ",\"reads_capped\":%" PRIu64
			",\"accepts_capped\":%" PRIu64 ",\"ready_served\":%" PRIu64
			",\"user_cpu_s\":%.6f,\"sys_cpu_s\":%.6f",
			st->accepted, st->refused, st->closed, st->open, st->requests, st->responses_200,
			st->responses_4xx, st->wait_calls, st->events, per_wait, st->peak_open, st->reads_capped,
			st->accepts_capped, st->ready_served, st->user_cpu_s, st->sys_cpu_s);
}

/* One write(2), so that the lines of several workers sharing stdout never mix. */
static void print_snapshot(struct server *s, int worker)
{
	char line[1024], counters[768];
	take_cpu_times(&s->stats);
	format_counters(counters, sizeof(counters), &s->stats);
	int n = snprintf(line, sizeof(line), "{\"event\":\"snapshot\",\"worker\":%d,\"pid\":%d,%s}\n", worker,
			 (int)getpid(), counters);
	if (n > 0 && write(STDOUT_FILENO, line, (size_t)n) < 0) {
		/* stdout gone: nobody is reading snapshots */
	}
}

static void print_stats(const struct options *o, int fd_limit, const struct worker_stats *per_worker,
			int count)
{
	struct worker_stats sum = { 0 };
	for (int i = 0; i < count; i++) {
		const struct worker_stats *w = &per_worker[i];
		sum.accepted += w->accepted;
		sum.refused += w->refused;
		sum.closed += w->closed;
		sum.open += w->open;
		sum.peak_open += w->peak_open; /* the workers' peaks need not coincide: an upper bound */
		sum.requests += w->requests;
		sum.responses_200 += w->responses_200;
		sum.responses_4xx += w->responses_4xx;
		sum.wait_calls += w->wait_calls;
		sum.events += w->events;
		sum.reads_capped += w->reads_capped;
		sum.accepts_capped += w->accepts_capped;
		sum.ready_served += w->ready_served;
		sum.user_cpu_s += w->user_cpu_s;
		sum.sys_cpu_s += w->sys_cpu_s;
	}
	char counters[768];
	format_counters(counters, sizeof(counters), &sum);
	printf("{\"event\":\"stats\",\"backend\":\"%s\",\"workers\":%d,\"fd_limit\":%d,%s,\"per_worker\":[",
	       o->backend, o->workers, fd_limit, counters);
	for (int i = 0; i < count; i++) {
		format_counters(counters, sizeof(counters), &per_worker[i]);
		printf("%s{\"worker\":%d,\"pid\":%d,%s}", i ? "," : "", i, (int)per_worker[i].pid, counters);
	}
	printf("]}\n");
	fflush(stdout);
}

/* ---------------------------------------------------------------- the loop */

static struct server *server_create(const struct options *o, int listen_fd, int max_fds)
{
	struct server *s = calloc(1, sizeof(*s));
	struct conn *conns = calloc((size_t)max_fds, sizeof(*conns));
	struct ready_entry *ready = calloc(2 * (size_t)max_fds, sizeof(*ready));
	int *ready_slot = malloc((size_t)max_fds * sizeof(*ready_slot));
	if (!s || !conns || !ready || !ready_slot)
		die("out of memory for %d connections", max_fds);
	memset(ready_slot, 0xff, (size_t)max_fds * sizeof(*ready_slot));
	s->conns = conns;
	s->ready = ready;
	s->ready_slot = ready_slot;
	s->max_fds = max_fds;
	s->listen_fd = listen_fd;

	char err[512];
	s->loop = ev_create(o->backend, max_fds, err, sizeof(err));
	if (!s->loop)
		usage_error("%s", err);

	int wake[2];
	if (pipe2(wake, O_NONBLOCK | O_CLOEXEC) < 0)
		die("pipe: %s", strerror(errno));
	s->wake_fd = wake[0];
	wake_write_fd = wake[1];
	s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (s->reserve_fd < 0)
		die("/dev/null: %s", strerror(errno));

	int failed = ev_add(s->loop, listen_fd, EV_READ);
	if (failed < 0)
		die("%s cannot watch the listening socket: %s", o->backend, strerror(-failed));
	failed = ev_add(s->loop, s->wake_fd, EV_READ);
	if (failed < 0)
		die("%s cannot watch its wake-up pipe: %s", o->backend, strerror(-failed));
	s->stats.pid = (int32_t)getpid();
	return s;
}

static void drain_wake_pipe(struct server *s)
{
	while (read(s->wake_fd, s->in, sizeof(s->in)) == (ssize_t)sizeof(s->in))
		continue;
}

/* At exit, so that a leak checker (the sanitized build's) finds only what the serving lost. */
static void server_destroy(struct server *s)
{
	for (int fd = 0; fd < s->max_fds; fd++) {
		free(s->conns[fd].stash);
		free(s->conns[fd].more_runs);
	}
	ev_destroy(s->loop);
	free(s->conns);
	free(s->ready);
	free(s->ready_slot);
	free(s);
}

/* Serves until SIGTERM/SIGINT; returns 0, or 1 if the wait failed. */
static int server_run(struct server *s, int worker)
{
	struct ev_event events[WAIT_BATCH];
	int status = 0;
	sigprocmask(SIG_SETMASK, &unblocked_signals, NULL);
	while (!stop_requested) {
		/* Those on the ready list now are served in this round: the wait must not block. */
		int due = s->ready_count;
		int n = ev_wait(s->loop, events, WAIT_BATCH, due > 0 ? 0 : -1);
		if (n < 0 && n != -EINTR) {
			fprintf(stderr, "ephttpd: %s: wait failed: %s\n", ev_name(s->loop), strerror(-n));
			status = 1;
			break;
		}
		int served = 0;
		for (int i = 0; i < n; i++) {
			int fd = events[i].fd;
			if (fd == s->wake_fd) {
				drain_wake_pipe(s);
				continue;
			}
			served++;
			if (s->ready_slot[fd] >= 0)
				make_ready(s, fd, events[i].events);
			else
				dispatch(s, fd, events[i].events);
		}
		serve_ready(s, due);
		/* Wakeups by our own signals (EINTR, the pipe) are not the workload's. */
		if (served > 0 || n == 0) {
			s->stats.wait_calls++;
			s->stats.events += (uint64_t)served;
		}
		/* After the pipe was drained: a signal since then left a byte in it. */
		if (snapshot_requested) {
			snapshot_requested = 0;
			print_snapshot(s, worker);
		}
	}
	take_cpu_times(&s->stats);
	return status;
}

/* ---------------------------------------------------------------- setup */

static int raise_fd_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		die("getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
	if (rl.rlim_cur < rl.rlim_max) {
		rlim_t soft = rl.rlim_cur;
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
			fprintf(stderr, "ephttpd: cannot raise RLIMIT_NOFILE to %llu (%s); keeping %llu\n",
				(unsigned long long)rl.rlim_max, strerror(errno), (unsigned long long)soft);
			rl.rlim_cur = soft;
		}
	}
	return rl.rlim_cur > INT_MAX ? INT_MAX : (int)rl.rlim_cur;
}

/* A listening socket; port 0 takes a free one, reported in *bound_port. */
static int open_listener(const struct options *o, int port, bool share_port, int *bound_port)
{
	struct addrinfo hints = {
		.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV,
		.ai_socktype = SOCK_STREAM,
	};
	struct addrinfo *ai;
	char service[16];
	snprintf(service, sizeof(service), "%d", port);
	int rc = getaddrinfo(o->bind, service, &hints, &ai);
	if (rc != 0)
		usage_error("--bind %s: not a numeric IPv4 or IPv6 address (%s)", o->bind, gai_strerror(rc));
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket: %s", strerror(errno));
	int one = 1;
	/* Accepted sockets inherit TCP_NODELAY: no setsockopt per connection. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    (share_port && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) ||
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		die("setsockopt: %s", strerror(errno));
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0)
		die("cannot bind %s port %d: %s (is another server there? --port 0 picks a free port)",
		    o->bind, port, strerror(errno));
	freeaddrinfo(ai);
	if (listen(fd, o->backlog) < 0)
		die("listen: %s", strerror(errno));
	struct sockaddr_storage addr;
	socklen_t len = sizeof(addr);
	if (getsockname(fd, (struct sockaddr *)&addr, &len) < 0)
		die("getsockname: %s", strerror(errno));
	*bound_port = ntohs(addr.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&addr)->sin6_port
						       : ((struct sockaddr_in *)&addr)->sin_port);
	return fd;
}

static void announce(const struct options *o, int port, int fd_limit)
{
	char line[512];
	snprintf(line, sizeof(line),
		 "{\"event\":\"listening\",\"bind\":\"%s\",\"port\":%d,\"backend\":\"%s\",\"workers\":%d,"
		 "\"fd_limit\":%d}\n",
		 o->bind, port, o->backend, o->workers, fd_limit);
	if (o->ready_file) {
		char tmp[PATH_MAX];
		snprintf(tmp, sizeof(tmp), "%s.%d.tmp", o->ready_file, (int)getpid());
		FILE *f = fopen(tmp, "w");
		if (!f || fputs(line, f) < 0 || fclose(f) != 0 || rename(tmp, o->ready_file) < 0)
			die("--ready-file %s: %s", o->ready_file, strerror(errno));
	}
	fputs(line, stdout);
	fflush(stdout);
}

/* ---------------------------------------------------------------- workers */

static void signal_workers(const pid_t *pids, int count, int sig)
{
	for (int i = 0; i < count; i++)
		if (pids[i] > 0)
			kill(pids[i], sig);
}

static int index_of(const pid_t *pids, int count, pid_t pid)
{
	for (int i = 0; i < count; i++)
		if (pids[i] == pid)
			return i;
	return -1;
}

static void describe_exit(char *buf, size_t size, int wstatus)
{
	if (WIFSIGNALED(wstatus))
		snprintf(buf, size, "was killed by signal %d", WTERMSIG(wstatus));
	else
		snprintf(buf, size, "exited with status %d", WEXITSTATUS(wstatus));
}

static _Noreturn void run_child(const struct options *o, int worker, const int *listeners,
				const int *stats_reads, int stats_write, int fd_limit, pid_t parent)
{
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() != parent)
		_exit(1);
	for (int i = 0; i < o->workers; i++)
		if (i != worker)
			close(listeners[i]);
	for (int i = 0; i < worker; i++)
		close(stats_reads[i]);
	struct server *s = server_create(o, listeners[worker], fd_limit);
	int status = server_run(s, worker);
	if (write(stats_write, &s->stats, sizeof(s->stats)) != (ssize_t)sizeof(s->stats))
		status = 1;
	_exit(status);
}

/*
 * The parent forks the workers, then only waits: it forwards SIGTERM/SIGINT
 * and SIGUSR1, and at the end sums the stats each worker sends through a pipe.
 */
static int run_workers(const struct options *o, const int *listeners, int port, int fd_limit)
{
	pid_t pids[MAX_WORKERS];
	int stats_reads[MAX_WORKERS];
	pid_t parent = getpid();

	char err[512];
	struct ev_loop *probe = ev_create(o->backend, fd_limit, err, sizeof(err));
	if (!probe)
		usage_error("%s", err);
	ev_destroy(probe);

	install_handler(SIGCHLD, on_child_exit);
	sigset_t blocked;
	sigemptyset(&blocked);
	sigaddset(&blocked, SIGTERM);
	sigaddset(&blocked, SIGINT);
	sigaddset(&blocked, SIGUSR1);
	sigaddset(&blocked, SIGCHLD);
	sigprocmask(SIG_BLOCK, &blocked, NULL);

	announce(o, port, fd_limit);
	for (int i = 0; i < o->workers; i++) {
		int p[2];
		if (pipe2(p, O_CLOEXEC) < 0)
			die("pipe: %s", strerror(errno));
		pid_t pid = fork();
		if (pid < 0)
			die("fork: %s", strerror(errno));
		if (pid == 0) {
			close(p[0]);
			run_child(o, i, listeners, stats_reads, p[1], fd_limit, parent);
		}
		close(p[1]);
		pids[i] = pid;
		stats_reads[i] = p[0];
	}
	for (int i = 0; i < o->workers; i++)
		close(listeners[i]);

	int status = 0, live = o->workers;
	bool stopping = false;
	while (live > 0) {
		if (stop_requested && !stopping) {
			stopping = true;
			signal_workers(pids, o->workers, SIGTERM);
		}
		if (snapshot_requested) {
			snapshot_requested = 0;
			signal_workers(pids, o->workers, SIGUSR1);
		}
		int wstatus;
		pid_t pid;
		while ((pid = waitpid(-1, &wstatus, WNOHANG)) > 0) {
			int i = index_of(pids, o->workers, pid);
			if (i < 0)
				continue;
			pids[i] = 0;
			live--;
			if (!stopping || !WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
				char how[64];
				describe_exit(how, sizeof(how), wstatus);
				fprintf(stderr, "ephttpd: worker %d (pid %d) %s%s\n", i, (int)pid, how,
					stopping ? "" : "; stopping the others");
				status = 1;
			}
			if (!stopping) {
				stopping = true;
				signal_workers(pids, o->workers, SIGTERM);
			}
		}
		/* Signals stay blocked but here, so none slips in between the checks and the wait. */
		if (live > 0)
			sigsuspend(&unblocked_signals);
	}

	struct worker_stats per_worker[MAX_WORKERS];
	int reported = 0;
	for (int i = 0; i < o->workers; i++) {
		struct worker_stats st;
		if (read(stats_reads[i], &st, sizeof(st)) == (ssize_t)sizeof(st))
			per_worker[reported++] = st;
		else
			status = 1;
		close(stats_reads[i]);
	}
	print_stats(o, fd_limit, per_worker, reported);
	return status;
}

/* ---------------------------------------------------------------- options */

static void print_help(void)
{
	printf("usage: ephttpd [options]\n"
	       "\n"
	       "Answers every HTTP/1.0 and 1.1 GET with 200 and a body of --msgsize bytes\n"
	       "(HEAD: the same without the body), through one event loop per process on\n"
	       "the backend chosen.  JSON lines on stdout: \"listening\" when ready; on\n"
	       "SIGTERM or SIGINT one \"stats\" line, then exit 0; on SIGUSR1 a \"snapshot\"\n"
	       "line per worker.\n"
	       "\n"
	       "  option             default     meaning\n"
	       "  --backend NAME     %-11s event backend: %s\n"
	       "  --bind ADDR        %-11s numeric IPv4 or IPv6 address to listen on\n"
	       "  --port N           %-11d TCP port; 0 takes a free one (the listening line says which)\n"
	       "  --backlog N        %-11d listen() backlog (the kernel caps it at net.core.somaxconn)\n"
	       "  --msgsize BYTES    %-11d body size of every 200 response\n"
	       "  --workers N        %-11d processes, each with its own loop and SO_REUSEPORT listener\n"
	       "  --ready-file PATH  %-11s also write the listening line to PATH, atomically\n"
	       "  --help                         this text\n",
	       DEFAULT_BACKEND, ev_backend_names(), DEFAULT_BIND, DEFAULT_PORT, DEFAULT_BACKLOG,
	       DEFAULT_MSGSIZE, DEFAULT_WORKERS, "none");
}

static long parse_number(const char *option, const char *text, long min, long max)
{
	char *end;
	errno = 0;
	long value = strtol(text, &end, 10);
	if (errno || end == text || *end || value < min || value > max)
		usage_error("%s: expected an integer in %ld..%ld, got '%s'", option, min, max, text);
	return value;
}

static struct options parse_options(int argc, char **argv)
{
	static const struct option long_options[] = {
		{ "backend", required_argument, NULL, 'b' },
		{ "bind", required_argument, NULL, 'a' },
		{ "port", required_argument, NULL, 'p' },
		{ "backlog", required_argument, NULL, 'l' },
		{ "msgsize", required_argument, NULL, 'm' },
		{ "workers", required_argument, NULL, 'w' },
		{ "ready-file", required_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct options o = {
		.backend = DEFAULT_BACKEND,
		.bind = DEFAULT_BIND,
		.port = DEFAULT_PORT,
		.backlog = DEFAULT_BACKLOG,
		.msgsize = DEFAULT_MSGSIZE,
		.workers = DEFAULT_WORKERS,
	};
	opterr = 0;
	int opt;
	while ((opt = getopt_long(argc, argv, ":h", long_options, NULL)) != -1) {
		switch (opt) {
		case 'b':
			o.backend = optarg;
			break;
		case 'a':
			o.bind = optarg;
			break;
		case 'p':
			o.port = (int)parse_number("--port", optarg, 0, 65535);
			break;
		case 'l':
			o.backlog = (int)parse_number("--backlog", optarg, 1, INT_MAX);
			break;
		case 'm':
			o.msgsize = parse_number("--msgsize", optarg, 0, MAX_MSGSIZE);
			break;
		case 'w':
			o.workers = (int)parse_number("--workers", optarg, 1, MAX_WORKERS);
			break;
		case 'r':
			o.ready_file = optarg;
			break;
		case 'h':
			print_help();
			exit(0);
		case ':':
			usage_error("%s needs a value (see --help)", argv[optind - 1]);
			break;
		default:
			usage_error("unknown option '%s' (see --help)", argv[optind - 1]);
		}
	}
	if (optind < argc)
		usage_error("unexpected argument '%s' (see --help)", argv[optind]);
	return o;
}

int main(int argc, char **argv)
{
	struct options o = parse_options(argc, argv);
	int fd_limit = raise_fd_limit();
	build_responses((size_t)o.msgsize);

	signal(SIGPIPE, SIG_IGN); /* a closed stdout or stats pipe is an EPIPE, not a death */
	sigprocmask(SIG_SETMASK, NULL, &unblocked_signals);
	install_handler(SIGTERM, on_stop_signal);
	install_handler(SIGINT, on_stop_signal);
	install_handler(SIGUSR1, on_snapshot_signal);

	int listeners[MAX_WORKERS];
	int port = o.port;
	for (int i = 0; i < o.workers; i++)
		listeners[i] = open_listener(&o, port, o.workers > 1, &port);

	if (o.workers > 1)
		return run_workers(&o, listeners, port, fd_limit);

	struct server *s = server_create(&o, listeners[0], fd_limit);
	announce(&o, port, fd_limit);
	int status = server_run(s, 0);
	print_stats(&o, fd_limit, &s->stats, 1);
	server_destroy(s);
	return status;
}
