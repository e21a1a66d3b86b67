/*
 * server.c - a worker's event loop: accepting, reading, writing and closing
 * for the connections' state machines (conn.h), through images/ev/ev.h.
 *
 * Handlers are right for level- and edge-triggered delivery alike: read until
 * a short read or EAGAIN (until EOF when the event said hang-up), write until
 * done or EAGAIN, then wait for EV_WRITE alone until the backlog is flushed.
 *
 * Fairness: one readiness event lets a connection do at most --reads-per-event
 * full reads (1: a read that fills the buffer ends its turn), a lingering one
 * LINGER_READS_PER_EVENT, and the listener at most --accepts-per-event accepts.  What such a
 * cap leaves undone goes on the loop's own ready list, served after the next
 * wait (which then does not block), because an edge-triggered backend would
 * not report the descriptor again: its data or its queued connections are
 * already there.  The counters say how often a cap was reached.
 *
 * Closing: a connection that ends after a response (Connection: close, an
 * error) shuts down its side and reads until the peer closes (a lingering
 * close), since closing with unread input would send a reset that can destroy
 * the response before the client has read it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "conn.h"
#include "parts.h"
#include "ev.h"

/* One read asks for far more than a request head, so a short read means drained. */
#define READ_SIZE 65536
/* Events taken from one wait. */
#define WAIT_BATCH 1024
/* iovecs in one sendmsg: IOV_MAX on Linux. */
#define WRITE_BATCH 1024
/* Reads of input a lingering connection discards per event (server.c's top). */
#define LINGER_READS_PER_EVENT 4

struct slot {
	bool open;
	bool awaiting_write; /* watching EV_WRITE only, not reading, until the backlog is flushed */
	bool peer_closed;    /* read EOF: close once the queue is flushed */
	bool lingering;      /* its last response sent and our side shut down: discard input until EOF */
	bool ready;          /* on the ready list */
	struct conn http;
};

struct server {
	struct ev_loop *loop;
	int listen_fd;
	int wake_fd;    /* read end of the pipe the signal handlers write */
	int reserve_fd; /* /dev/null, given up to accept-and-close when out of descriptors */
	int max_fds;
	int reads_per_event, accepts_per_event;
	bool reported_watch_failure;
	bool listener_ready; /* on the ready list */
	struct slot *slots;
	int *ready; /* descriptors a cap cut short; the listener's is listen_fd */
	int ready_count;
	struct worker_stats stats;
	struct holders *holders; /* --dead-holders: whose connections are foreign items of our loop */
	char in[READ_SIZE];
};

/* -------------------------------------------------------------- connections */

static void put_on_ready_list(struct server *s, int fd)
{
	bool *flag = fd == s->listen_fd ? &s->listener_ready : &s->slots[fd].ready;
	if (!*flag) {
		*flag = true;
		s->ready[s->ready_count++] = fd;
	}
}

static void close_conn(struct server *s, int fd)
{
	struct slot *c = &s->slots[fd];
	ev_delete(s->loop, fd); /* before close: ev.h */
	close(fd);
	conn_free(&c->http);
	/* A place on the ready list stays taken (serve() skips a closed slot), so that a connection given
	 * this descriptor next is never listed twice: the list never outgrows max_fds. */
	*c = (struct slot){ .ready = c->ready };
	conn_init(&c->http);
	count_closed(&s->stats);
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
	s->slots[fd].open = true;
	count_opened(&s->stats);
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

static void accept_connections(struct server *s)
{
	for (int taken = 0; taken < s->accepts_per_event; taken++) {
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
	put_on_ready_list(s, s->listen_fd);
}

/* ---------------------------------------------------------------- output */

enum flush_result { FLUSH_DONE, FLUSH_BLOCKED, FLUSH_FAILED };

static enum flush_result flush(struct server *s, int fd, struct slot *c)
{
	struct conn_counts counts = { 0 };
	enum flush_result result = FLUSH_DONE;
	while (conn_pending(&c->http)) {
		struct iovec iov[WRITE_BATCH];
		size_t total;
		int count = conn_output(&c->http, iov, WRITE_BATCH, &total);
		/* send and sendmsg skip the VFS layer of write and writev, and send the
		 * iovec copy: a measurable share of a reply's CPU on loopback.  MSG_NOSIGNAL:
		 * a peer's reset is an EPIPE, not a SIGPIPE. */
		ssize_t n = count == 1 ? send(fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL)
				       : sendmsg(fd, &(struct msghdr){ .msg_iov = iov, .msg_iovlen = (size_t)count },
						 MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			result = errno == EAGAIN ? FLUSH_BLOCKED : FLUSH_FAILED;
			break;
		}
		conn_sent(&c->http, (size_t)n, &counts);
		/* A short write means the socket buffer is full: another would get EAGAIN. */
		if ((size_t)n < total) {
			result = FLUSH_BLOCKED;
			break;
		}
	}
	count_http(&s->stats, &counts);
	return result;
}

/* Reads and drops everything until EAGAIN; closes on EOF or error.  A short
 * read does not end it: the peer's FIN may have come with its last bytes, and
 * an edge-triggered backend would not report it again.  A peer that keeps
 * sending gets LINGER_READS_PER_EVENT reads, then waits on the ready list. */
static void discard_input(struct server *s, int fd)
{
	for (int reads = 0; reads < LINGER_READS_PER_EVENT; reads++) {
		ssize_t n = recv(fd, s->in, sizeof(s->in), 0);
		if (n > 0 || (n < 0 && errno == EINTR))
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		close_conn(s, fd);
		return;
	}
	s->stats.reads_capped++;
	put_on_ready_list(s, fd);
}

static void end_after_last_response(struct server *s, int fd, struct slot *c)
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
static bool write_queued(struct server *s, int fd, struct slot *c)
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
	if (c->http.ended) {
		end_after_last_response(s, fd, c);
		return false;
	}
	if (c->peer_closed) {
		close_conn(s, fd);
		return false;
	}
	return true;
}

/* ---------------------------------------------------------------- input */

enum read_result {
	READ_DRAINED, /* EAGAIN */
	READ_SHORT,   /* less than asked: drained, unless the peer also hung up (see serve_input) */
	READ_MORE,    /* the buffer filled: there may be more */
	READ_EOF,
	READ_FAILED,
};

/* One read, after the unfinished head kept from the last one; queues the answers. */
static enum read_result read_requests(struct server *s, int fd, struct slot *c)
{
	size_t have = conn_copy_stash(&c->http, s->in);
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
	struct conn_counts counts = { 0 };
	bool kept = conn_input(&c->http, s->in, have + (size_t)n, &counts);
	count_http(&s->stats, &counts);
	if (!kept)
		return READ_FAILED;
	return (size_t)n < room ? READ_SHORT : READ_MORE;
}

/*
 * A short read means the socket is drained, but not that the peer's FIN, come
 * with the last bytes, was seen: an edge-triggered backend will not announce
 * it again.  When the event said hang-up (EV_ERROR), read on to the EOF.  After
 * reads_per_event full reads the connection waits on the ready list.
 */
static void serve_input(struct server *s, int fd, struct slot *c, unsigned events)
{
	for (int full = 0;;) {
		enum read_result r = read_requests(s, fd, c);
		if (r == READ_FAILED) {
			close_conn(s, fd);
			return;
		}
		if (!write_queued(s, fd, c))
			return;
		if (r == READ_MORE && ++full == s->reads_per_event) {
			s->stats.reads_capped++;
			put_on_ready_list(s, fd);
			return;
		}
		if (r != READ_MORE && !(r == READ_SHORT && (events & EV_ERROR)))
			return;
	}
}

static void serve(struct server *s, int fd, unsigned events)
{
	struct slot *c = &s->slots[fd];
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

/* Serves what the caps left on the ready list before this round; what they
 * leave now waits for the next. */
static void serve_ready_list(struct server *s)
{
	int count = s->ready_count;
	for (int i = 0; i < count; i++) {
		int fd = s->ready[i];
		if (fd == s->listen_fd) {
			s->listener_ready = false;
			s->stats.ready_served++;
			accept_connections(s);
		} else if (s->slots[fd].ready) {
			s->slots[fd].ready = false;
			s->stats.ready_served++;
			serve(s, fd, EV_READ);
		}
	}
	s->ready_count -= count;
	memmove(s->ready, s->ready + count, (size_t)s->ready_count * sizeof(*s->ready));
}

/* ---------------------------------------------------------------- the loop */

struct server *server_create(const struct options *o, int listen_fd, int max_fds)
{
	struct server *s = calloc(1, sizeof(*s));
	struct slot *slots = calloc((size_t)max_fds, sizeof(*slots));
	int *ready = calloc((size_t)max_fds, sizeof(*ready));
	if (!s || !slots || !ready)
		die("out of memory for %d connections", max_fds);
	for (int fd = 0; fd < max_fds; fd++)
		conn_init(&slots[fd].http);
	s->slots = slots;
	s->ready = ready;
	s->max_fds = max_fds;
	s->listen_fd = listen_fd;
	s->reads_per_event = o->reads_per_event;
	s->accepts_per_event = o->accepts_per_event;

	char err[512];
	s->loop = ev_create(o->backend, max_fds, err, sizeof(err));
	if (!s->loop)
		usage_error("%s", err);

	open_wake_and_reserve(&s->wake_fd, &s->reserve_fd);

	int failed = ev_add(s->loop, listen_fd, EV_READ);
	if (failed < 0)
		die("%s cannot watch the listening socket: %s", o->backend, strerror(-failed));
	failed = ev_add(s->loop, s->wake_fd, EV_READ);
	if (failed < 0)
		die("%s cannot watch its wake-up pipe: %s", o->backend, strerror(-failed));
	s->stats.pid = (int32_t)getpid();
	return s;
}

struct ev_loop *server_loop(struct server *s)
{
	return s->loop;
}

void server_attach_holders(struct server *s, struct holders *h)
{
	s->holders = h;
}

void server_destroy(struct server *s)
{
	for (int fd = 0; fd < s->max_fds; fd++) {
		if (s->slots[fd].open)
			close(fd);
		conn_free(&s->slots[fd].http);
	}
	ev_destroy(s->loop);
	close_wake_and_reserve(s->wake_fd, s->reserve_fd);
	free(s->slots);
	free(s->ready);
	free(s);
}

/* Hands each event to its handler; returns how many were the workload's (the wake pipe's are our signals). */
static int serve_events(struct server *s, const struct ev_event *events, int n)
{
	int served = 0;
	for (int i = 0; i < n; i++) {
		int fd = events[i].fd;
		if (fd == s->wake_fd) {
			drain_wake_pipe(s->wake_fd);
			continue;
		}
		served++;
		if (fd == EV_FOREIGN)
			holders_forward(s->holders, &events[i]);
		else if (fd == s->listen_fd)
			accept_connections(s);
		else
			serve(s, fd, events[i].events);
	}
	return served;
}

/* Wakeups by our own signals (EINTR, the pipe) are not the workload's: only the others count as waits. */
static void count_wait(struct server *s, int n, int served)
{
	if (served > 0 || (n == 0 && s->ready_count == 0)) {
		s->stats.wait_calls++;
		s->stats.events += (uint64_t)served;
	}
}

/* What the signals asked, after the pipe was drained (a signal since then left a byte in it). */
static void answer_signals(struct server *s, int worker)
{
	if (s->holders)
		holders_reap(s->holders);
	if (snapshot_requested) {
		snapshot_requested = 0;
		print_snapshot(&s->stats, worker, s->holders);
	}
}

int server_run(struct server *s, int worker, struct worker_stats **stats)
{
	struct ev_event events[WAIT_BATCH];
	int status = 0;
	*stats = &s->stats;
	sigprocmask(SIG_SETMASK, &unblocked_signals, NULL);
	while (!stop_requested) {
		/* With work on the ready list the wait only collects what else is ready. */
		int n = ev_wait(s->loop, events, WAIT_BATCH, s->ready_count > 0 ? 0 : -1);
		if (n < 0 && n != -EINTR) {
			fprintf(stderr, "ephttpd: %s: wait failed: %s\n", ev_name(s->loop), strerror(-n));
			status = 1;
			break;
		}
		count_wait(s, n, serve_events(s, events, n));
		serve_ready_list(s);
		answer_signals(s, worker);
	}
	take_cpu_times(&s->stats);
	return status;
}
