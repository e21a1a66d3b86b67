/*
 * uring_loop.c - ephttpd's "io_uring-recv" backend: a worker's serving loop
 * on io_uring as a completion API, feeding the same HTTP state machine
 * (conn.h) as server.c's readiness loop.  It does not go through ev.h: there
 * is no readiness to report, the kernel does the reading and writing.
 *
 * The model:
 *   - one multishot accept on the listener: a completion per connection;
 *   - one multishot recv per connection into a provided buffer ring (one
 *     group of BUF_COUNT buffers of BUF_SIZE bytes, shared by every
 *     connection).  A completion's bytes go to conn_input straight from their
 *     buffer (an unfinished request head is copied out into the connection's
 *     stash, as conn.c does for any read) and the buffer goes back to the ring
 *     at once.  When the ring runs dry the kernel ends the recv with -ENOBUFS;
 *     it is armed again, and the bytes wait in the socket meanwhile;
 *   - responses go out by send SQEs: one send (sendmsg for several pipelined
 *     responses, up to WRITE_BATCH) in flight per connection; a short send is
 *     followed by another from where it stopped;
 *   - closing: after a closing response a SHUTDOWN SQE sends our FIN and the
 *     recv discards input until the peer's (a lingering close, as server.c's);
 *     then a CLOSE SQE, after an ASYNC_CANCEL of the recv if it is still
 *     armed (an armed request holds its file).  Both skip their completion
 *     when they succeed (IOSQE_CQE_SKIP_SUCCESS).  The close waits for the
 *     shutdown's completion: an io-wq worker runs the shutdown and looks the
 *     descriptor up only then, when a close could have given its number to
 *     the next connection;
 *   - out of descriptors, an accept fails at once whether a connection is
 *     queued or not: the queued ones are taken and closed (refused), and a
 *     one-shot poll waits for the next before the accept is armed again;
 *   - one io_uring_submit_and_wait(1) per batch: the SQEs the last batch
 *     queued go in and the loop sleeps until a completion.  A send that
 *     completes at once ends the next wait at once: with one connection
 *     asking one request at a time that is two enters per request, under
 *     many connections one enter serves many (README.md).  The ring is
 *     IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, so completions
 *     are posted when the loop enters the kernel and not by task work
 *     interrupting it, and its descriptor is registered (io_uring_enter
 *     skips the fd lookup);
 *   - signals: the handlers write to a pipe (process.c) on which a multishot
 *     poll is armed, so a signal landing between the loop's check and its
 *     wait still wakes it.
 * A completion's user_data names its kind, its connection (descriptor or
 * direct index) and the connection's generation, which a close advances: a
 * completion of an earlier connection on the same number (a send still in
 * flight, a cancelled recv) is stale and only gives its buffer back.
 *
 * Descriptors: plain ones by default, since direct (fixed) descriptors
 * showed no gain this host's noise could tell (README.md, "io_uring as a
 * completion API").  EPHTTPD_URING_FIXED_FILES=1 accepts into a sparse
 * registered table instead, of the descriptor limit less OWN_FDS entries
 * (every SQE then IOSQE_FIXED_FILE, closing by CLOSE_DIRECT; a full table
 * makes the kernel take a connection and close it, counted as refused).
 * Direct descriptors do not appear in /proc/PID/fd: count them through the
 * counters.
 *
 * Kernel features (checked at start, never worked around): DEFER_TASKRUN
 * (Linux 6.1), provided buffer rings (5.19), multishot recv (6.0).  A kernel
 * lacking one makes ephttpd exit 2 naming it and the release that has it.
 * EPHTTPD_URING_PRETEND_MISSING=defer-taskrun|buffer-rings|multishot-recv
 * makes the check report that feature missing, so the tests can take that
 * path on a kernel that has everything.  Debian's liburing 2.3 lacks
 * io_uring_setup_buf_ring (2.4): the ring is mapped and registered here.
 *
 * Counters (parts.h): events are the completions that brought input or a
 * connection (as a readiness backend's events); wait_calls the
 * submit-and-waits that returned any completion but the wake pipe's;
 * submissions the SQEs submitted, completions every CQE reaped but the
 * wake pipe's (sends and stale ones included), recv_rearmed the recvs
 * armed again after -ENOBUFS.
 * reads_capped, accepts_capped and ready_served stay 0: the kernel bounds a
 * multishot request's turn itself.
 *
 * Memory per connection: its slot here (struct uslot), the kernel's socket
 * and one armed multishot recv (an io_kiocb, its async state and poll entry,
 * more kernel memory than epoll's epitem and wait-queue entry: README.md,
 * "io_uring as a completion API", has the sizes); no buffer (the ring is
 * shared, and a dead connection's half request lives in its stash, as with
 * every backend).
 *
 * Not measured or done: zero-copy send, registered buffers for sends,
 * SQPOLL (a kernel thread polling the SQ would hide CPU time from the
 * process's own), bundles (6.10), incremental buffer consumption (6.12).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "conn.h"
#include "parts.h"
#include "ev.h"
#include "http.h"

/* The provided buffers: a request is far smaller, a burst takes several. */
#define BUF_SIZE  4096u
#define BUF_COUNT 1024u /* a power of two */
#define BUF_GROUP 0
#define SQ_ENTRIES 4096u
/* iovecs in one sendmsg: IOV_MAX on Linux. */
#define WRITE_BATCH 1024u

/* Ordinary descriptors the process keeps beside a table of direct ones: stdio, the listener, the ring, the
 * wake-up pipe, the reserve, a few spare. */
#define OWN_FDS 16

#define PRETEND_ENV "EPHTTPD_URING_PRETEND_MISSING"
#define FIXED_ENV   "EPHTTPD_URING_FIXED_FILES"

/* What a request was submitted for, which its completions carry back in their user_data. */
enum request_kind {
	REQ_ACCEPT = 1,  /* the multishot accept */
	REQ_LISTEN_POLL, /* the one-shot poll that waits for a connection when out of descriptors */
	REQ_RECV,        /* a connection's multishot recv */
	REQ_SEND,        /* a connection's send or sendmsg */
	REQ_SHUTDOWN,    /* a connection's SHUT_WR */
	REQ_WAKE,        /* the multishot poll on the wake pipe */
	REQ_PROBE,       /* the multishot recv that checks the kernel's support */
	REQ_IGNORE,      /* a cancel or close, whose completion comes only when it fails */
};

/* A request's user_data: its kind in the top byte, then a connection's generation (24 bits) and its
 * descriptor or direct index (32 bits); both 0 for the requests that are not a connection's. */
#define KIND_SHIFT 56
#define GEN_SHIFT  32
#define GEN_MASK   0xffffffu

static uint64_t user_data_of(enum request_kind kind, uint32_t fd, uint32_t gen)
{
	return (uint64_t)kind << KIND_SHIFT | (uint64_t)(gen & GEN_MASK) << GEN_SHIFT | fd;
}

static enum request_kind kind_of(uint64_t user_data)
{
	return (enum request_kind)(user_data >> KIND_SHIFT);
}

static uint32_t fd_of(uint64_t user_data)
{
	return (uint32_t)user_data;
}

static uint32_t gen_of(uint64_t user_data)
{
	return (uint32_t)(user_data >> GEN_SHIFT) & GEN_MASK;
}

/* A sendmsg's header and iovecs; the kernel reads them when the SQE is submitted. */
struct sendbuf {
	struct msghdr msg;
	uint32_t cap;
	struct iovec iov[];
};

struct uslot {
	uint32_t gen;     /* advanced by each close: older completions are stale */
	bool open;
	bool recv_armed;  /* its multishot recv has not posted its last completion */
	bool sending;     /* a send is in flight */
	bool peer_closed; /* the recv saw EOF: close once the queue is flushed */
	bool lingering;   /* its last response sent and our FIN queued: discard input until EOF */
	bool shutting;    /* its SHUTDOWN has not completed: the close waits for it (close_conn) */
	bool close_after_shutdown;
	struct conn http;
	struct sendbuf *out; /* allocated when it first pipelines; kept for the slot's next connection */
};

struct uring_server {
	struct io_uring ring;
	bool fixed; /* direct descriptors */
	int listen_fd;
	int wake_fd;
	int reserve_fd;
	int max_fds;
	struct io_uring_buf_ring *buf_ring;
	size_t buf_ring_bytes;
	char *bufs;
	struct uslot *slots;
	struct worker_stats stats;
	char in[HTTP_HEAD_MAX + BUF_SIZE]; /* a stash and the bytes that follow it */
};

/* ------------------------------------------------------------ features */

struct feature {
	const char *name; /* for PRETEND_ENV */
	const char *what;
	const char *release;
};

static const struct feature defer_taskrun = { "defer-taskrun", "IORING_SETUP_DEFER_TASKRUN", "6.1" };
static const struct feature buffer_rings = { "buffer-rings", "provided buffer rings (IORING_REGISTER_PBUF_RING)",
					     "5.19" };
static const struct feature multishot_recv = { "multishot-recv", "multishot recv (IORING_RECV_MULTISHOT)", "6.0" };

static bool pretend_missing(const struct feature *f)
{
	const char *named = getenv(PRETEND_ENV);
	if (!named || !*named)
		return false;
	if (strcmp(named, defer_taskrun.name) && strcmp(named, buffer_rings.name) && strcmp(named, multishot_recv.name))
		usage_error("%s=%s: name one of %s, %s, %s", PRETEND_ENV, named, defer_taskrun.name, buffer_rings.name,
			    multishot_recv.name);
	return strcmp(named, f->name) == 0;
}

static _Noreturn void lacks(const struct feature *f)
{
	struct utsname u;
	if (uname(&u) < 0)
		strcpy(u.release, "?");
	usage_error("io_uring-recv: this kernel (Linux %s) lacks %s, which Linux %s brought; "
		    "io_uring-recv has no fallback: choose another --backend",
		    u.release, f->what, f->release);
}

/* ------------------------------------------------------------ submissions */

static struct io_uring_sqe *next_sqe(struct uring_server *s)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
	while (!sqe) {
		/* The SQ is full: submit it without waiting. */
		int n = io_uring_submit(&s->ring);
		if (n < 0 && n != -EINTR && n != -EAGAIN && n != -EBUSY)
			die("io_uring-recv: submit: %s", strerror(-n));
		if (n > 0)
			s->stats.submissions += (uint64_t)n;
		sqe = io_uring_get_sqe(&s->ring);
	}
	return sqe;
}

static void mark_fixed(struct uring_server *s, struct io_uring_sqe *sqe)
{
	if (s->fixed)
		sqe->flags |= IOSQE_FIXED_FILE;
}

/* The provided buffer a completion's flags name (IORING_CQE_F_BUFFER). */
static unsigned buffer_id(unsigned flags)
{
	return flags >> IORING_CQE_BUFFER_SHIFT;
}

static char *buffer_bytes(const struct uring_server *s, unsigned id)
{
	return s->bufs + (size_t)id * BUF_SIZE;
}

/* Gives the provided buffer a completion used, if any, back to the ring. */
static void return_buffer(struct uring_server *s, unsigned flags)
{
	if (!(flags & IORING_CQE_F_BUFFER))
		return;
	unsigned id = buffer_id(flags);
	io_uring_buf_ring_add(s->buf_ring, buffer_bytes(s, id), BUF_SIZE, (unsigned short)id,
			      io_uring_buf_ring_mask(BUF_COUNT), 0);
	io_uring_buf_ring_advance(s->buf_ring, 1);
}

static void arm_recv(struct uring_server *s, int fd)
{
	struct uslot *c = &s->slots[fd];
	struct io_uring_sqe *sqe = next_sqe(s);
	io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = BUF_GROUP;
	mark_fixed(s, sqe);
	io_uring_sqe_set_data64(sqe, user_data_of(REQ_RECV, (uint32_t)fd, c->gen));
	c->recv_armed = true;
}

static void arm_accept(struct uring_server *s)
{
	struct io_uring_sqe *sqe = next_sqe(s);
	/* Blocking sockets: io_uring polls them itself, and would hand a non-blocking one's EAGAIN back.
	 * A direct descriptor is in no descriptor table an exec could inherit: no SOCK_CLOEXEC (EINVAL). */
	if (s->fixed)
		io_uring_prep_multishot_accept_direct(sqe, s->listen_fd, NULL, NULL, 0);
	else
		io_uring_prep_multishot_accept(sqe, s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, user_data_of(REQ_ACCEPT, 0, 0));
}

/* Out of descriptors, an accept fails at once, whether a connection is queued or not: the loop waits for one
 * with a one-shot poll before it arms the accept again. */
static void arm_listen_poll(struct uring_server *s)
{
	struct io_uring_sqe *sqe = next_sqe(s);
	io_uring_prep_poll_add(sqe, s->listen_fd, POLLIN);
	io_uring_sqe_set_data64(sqe, user_data_of(REQ_LISTEN_POLL, 0, 0));
}

static void arm_wake(struct uring_server *s)
{
	struct io_uring_sqe *sqe = next_sqe(s);
	io_uring_prep_poll_multishot(sqe, s->wake_fd, POLLIN);
	io_uring_sqe_set_data64(sqe, user_data_of(REQ_WAKE, 0, 0));
}

/* ------------------------------------------------------------ connections */

/*
 * A SHUTDOWN runs in an io-wq worker, which looks its descriptor up only
 * then: closed before that, the number may already name the next connection,
 * which the shutdown would end.  So a close waits for its shutdown's completion.
 */
static void close_conn(struct uring_server *s, int fd)
{
	struct uslot *c = &s->slots[fd];
	if (c->shutting) {
		c->close_after_shutdown = true;
		return;
	}
	if (c->recv_armed) {
		struct io_uring_sqe *sqe = next_sqe(s);
		io_uring_prep_cancel64(sqe, user_data_of(REQ_RECV, (uint32_t)fd, c->gen), 0);
		sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
		io_uring_sqe_set_data64(sqe, user_data_of(REQ_IGNORE, 0, 0));
	}
	struct io_uring_sqe *sqe = next_sqe(s);
	if (s->fixed)
		io_uring_prep_close_direct(sqe, (unsigned)fd);
	else
		io_uring_prep_close(sqe, fd);
	sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
	io_uring_sqe_set_data64(sqe, user_data_of(REQ_IGNORE, 0, 0));
	conn_free(&c->http);
	*c = (struct uslot){ .gen = (c->gen + 1) & GEN_MASK, .out = c->out };
	conn_init(&c->http);
	count_closed(&s->stats);
}

static void admit(struct uring_server *s, int fd)
{
	if (fd >= s->max_fds) {
		close(fd); /* not with fixed files: the table has max_fds entries */
		s->stats.refused++;
		return;
	}
	struct uslot *c = &s->slots[fd];
	c->open = true;
	count_opened(&s->stats);
	arm_recv(s, fd);
}

/*
 * Out of descriptors (or of direct slots): take the queued connections off
 * the listener and close them, giving up the reserve descriptor for it, then
 * the caller arms the accept again.  Leaving them queued would end the
 * re-armed accept at once, over and over.
 */
static void refuse_queued(struct uring_server *s)
{
	if (s->reserve_fd >= 0)
		close(s->reserve_fd);
	for (;;) {
		int fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			break; /* EAGAIN: none queued */
		}
		close(fd);
		s->stats.refused++;
	}
	s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static uint64_t queued_responses(const struct conn *c)
{
	uint64_t n = 0;
	for (uint32_t r = 0; r < c->run_count && n < WRITE_BATCH; r++)
		n += c->runs[r].count;
	return n < WRITE_BATCH ? n : WRITE_BATCH;
}

static void start_send(struct uring_server *s, int fd)
{
	struct uslot *c = &s->slots[fd];
	uint64_t responses = queued_responses(&c->http);
	struct io_uring_sqe *sqe;
	size_t total;
	if (responses == 1) {
		struct iovec one;
		conn_output(&c->http, &one, 1, &total);
		sqe = next_sqe(s);
		io_uring_prep_send(sqe, fd, one.iov_base, one.iov_len, MSG_NOSIGNAL);
	} else {
		if (!c->out || c->out->cap < responses) {
			uint32_t cap = c->out ? c->out->cap : 4;
			while (cap < responses)
				cap *= 2;
			struct sendbuf *grown = realloc(c->out, sizeof(*grown) + cap * sizeof(struct iovec));
			if (!grown) {
				close_conn(s, fd);
				return;
			}
			grown->cap = cap;
			c->out = grown;
		}
		int count = conn_output(&c->http, c->out->iov, (int)c->out->cap, &total);
		c->out->msg = (struct msghdr){ .msg_iov = c->out->iov, .msg_iovlen = (size_t)count };
		sqe = next_sqe(s);
		io_uring_prep_sendmsg(sqe, fd, &c->out->msg, MSG_NOSIGNAL);
	}
	mark_fixed(s, sqe);
	io_uring_sqe_set_data64(sqe, user_data_of(REQ_SEND, (uint32_t)fd, c->gen));
	c->sending = true;
}

/* After a send completed, or input that queued nothing new: send on, or end the connection as its state asks. */
static void after_output(struct uring_server *s, int fd)
{
	struct uslot *c = &s->slots[fd];
	if (conn_pending(&c->http)) {
		start_send(s, fd);
		return;
	}
	if (c->http.ended && !c->lingering) {
		if (c->peer_closed || !c->recv_armed) {
			close_conn(s, fd);
			return;
		}
		/* Our FIN, then discard input until the peer's (a lingering close: server.c's top). */
		struct io_uring_sqe *sqe = next_sqe(s);
		io_uring_prep_shutdown(sqe, fd, SHUT_WR);
		mark_fixed(s, sqe);
		io_uring_sqe_set_data64(sqe, user_data_of(REQ_SHUTDOWN, (uint32_t)fd, c->gen));
		c->lingering = true;
		c->shutting = true;
		return;
	}
	if (c->peer_closed)
		close_conn(s, fd);
}

/* Feeds the bytes a recv completion brought to the connection's HTTP state (after its stash, if it kept one),
 * and starts a send when that queued responses and none is in flight. */
static void serve_received(struct uring_server *s, int fd, const char *bytes, size_t n)
{
	struct uslot *c = &s->slots[fd];
	if (c->lingering || c->http.closing)
		return; /* nothing after a closing request is read as one (conn.h) */
	struct conn_counts counts = { 0 };
	bool kept;
	if (c->http.stash_len == 0) {
		kept = conn_input(&c->http, bytes, n, &counts);
	} else {
		size_t have = conn_copy_stash(&c->http, s->in);
		if (have + n > sizeof(s->in)) {
			close_conn(s, fd);
			return;
		}
		memcpy(s->in + have, bytes, n);
		kept = conn_input(&c->http, s->in, have + n, &counts);
	}
	count_http(&s->stats, &counts);
	if (!kept) {
		close_conn(s, fd);
		return;
	}
	if (!c->sending && conn_pending(&c->http))
		start_send(s, fd);
}

/* ------------------------------------------------------------ completions */

/* Whether the connection a completion names (its descriptor and generation) is the one open there now: a
 * close advances the generation, so a completion of an earlier connection on that number is stale. */
static bool still_open(const struct uring_server *s, uint32_t fd, uint32_t gen)
{
	return fd < (uint32_t)s->max_fds && s->slots[fd].open && s->slots[fd].gen == gen;
}

static void on_recv(struct uring_server *s, uint32_t fd, uint32_t gen, int res, unsigned flags)
{
	if (!still_open(s, fd, gen)) {
		return_buffer(s, flags);
		return;
	}
	struct uslot *c = &s->slots[fd];
	s->stats.events++;
	if (!(flags & IORING_CQE_F_MORE))
		c->recv_armed = false;
	if (res > 0) {
		serve_received(s, (int)fd, buffer_bytes(s, buffer_id(flags)), (size_t)res);
		return_buffer(s, flags);
		/* Ended for another reason than EOF (the kernel could not post a completion): arm it again. */
		if (still_open(s, fd, gen) && !c->recv_armed)
			arm_recv(s, (int)fd);
		return;
	}
	return_buffer(s, flags);
	if (res == -ENOBUFS) {
		s->stats.recv_rearmed++;
		arm_recv(s, (int)fd);
	} else if (res == 0) {
		c->peer_closed = true;
		if (!c->sending)
			close_conn(s, (int)fd);
	} else if (!(flags & IORING_CQE_F_MORE)) {
		close_conn(s, (int)fd); /* a reset, or another error */
	}
}

static void on_send(struct uring_server *s, uint32_t fd, uint32_t gen, int res)
{
	if (!still_open(s, fd, gen))
		return;
	struct uslot *c = &s->slots[fd];
	c->sending = false;
	if (res <= 0) {
		close_conn(s, (int)fd); /* EPIPE, a reset */
		return;
	}
	struct conn_counts counts = { 0 };
	conn_sent(&c->http, (size_t)res, &counts);
	count_http(&s->stats, &counts);
	after_output(s, (int)fd);
}

static void on_shutdown(struct uring_server *s, uint32_t fd, uint32_t gen, int res)
{
	if (!still_open(s, fd, gen))
		return;
	struct uslot *c = &s->slots[fd];
	c->shutting = false;
	if (c->close_after_shutdown || res < 0)
		close_conn(s, (int)fd);
}

static void on_accept(struct uring_server *s, int res, unsigned flags)
{
	s->stats.events++;
	bool out_of_descriptors = res == -EMFILE || res == -ENFILE;
	if (res >= 0) {
		admit(s, res);
	} else if (out_of_descriptors) {
		/* Out of direct slots the kernel has taken the connection, and closes it. */
		if (s->fixed && res == -ENFILE)
			s->stats.refused++;
		refuse_queued(s);
	}
	else if (res != -ECONNABORTED && res != -EINTR && res != -ENOBUFS && res != -ENOMEM && res != -EAGAIN)
		die("io_uring-recv: accept: %s", strerror(-res)); /* armed again, it would fail again at once */
	if (!(flags & IORING_CQE_F_MORE)) {
		if (out_of_descriptors)
			arm_listen_poll(s);
		else
			arm_accept(s);
	}
}

static void on_wake(struct uring_server *s, unsigned flags)
{
	drain_wake_pipe(s->wake_fd);
	if (!(flags & IORING_CQE_F_MORE))
		arm_wake(s);
}

/* Hands one completion to its handler; returns whether it was the workload's (not the wake pipe's: our own
 * signals). */
static bool handle_completion(struct uring_server *s, const struct io_uring_cqe *cqe)
{
	uint64_t user_data = io_uring_cqe_get_data64(cqe);
	uint32_t fd = fd_of(user_data), gen = gen_of(user_data);
	int res = cqe->res;
	unsigned flags = cqe->flags;
	switch (kind_of(user_data)) {
	case REQ_ACCEPT:
		on_accept(s, res, flags);
		break;
	case REQ_LISTEN_POLL:
		arm_accept(s);
		break;
	case REQ_RECV:
		on_recv(s, fd, gen, res, flags);
		break;
	case REQ_SEND:
		on_send(s, fd, gen, res);
		break;
	case REQ_SHUTDOWN:
		on_shutdown(s, fd, gen, res);
		break;
	case REQ_WAKE:
		on_wake(s, flags);
		return false;
	default:
		return_buffer(s, flags); /* a failed cancel or close: nothing to do */
		break;
	}
	return true;
}

/* Handles every completion there is; returns how many were the workload's. */
static unsigned reap(struct uring_server *s)
{
	struct io_uring_cqe *cqe;
	unsigned head, reaped = 0, workload = 0;
	io_uring_for_each_cqe(&s->ring, head, cqe) {
		reaped++;
		workload += handle_completion(s, cqe);
	}
	io_uring_cq_advance(&s->ring, reaped);
	s->stats.completions += workload;
	return workload;
}

/* ------------------------------------------------------------ setup */

/* Multishot recv came with 6.0; older kernels fail the SQE with -EINVAL.  One
 * byte through a socket pair, then its EOF, which ends the request. */
static void probe_multishot_recv(struct uring_server *s)
{
	if (pretend_missing(&multishot_recv))
		lacks(&multishot_recv);
	int pair[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0)
		die("socketpair: %s", strerror(errno));
	struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
	io_uring_prep_recv_multishot(sqe, pair[0], NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = BUF_GROUP;
	io_uring_sqe_set_data64(sqe, user_data_of(REQ_PROBE, 0, 0));
	if (send(pair[1], "x", 1, 0) != 1)
		die("socketpair: %s", strerror(errno));
	bool more = true, first = true;
	while (more) {
		struct io_uring_cqe *cqe;
		int ret = io_uring_submit_and_wait(&s->ring, 1);
		if (ret >= 0)
			ret = io_uring_peek_cqe(&s->ring, &cqe);
		if (ret == -EINTR)
			continue;
		if (ret < 0)
			die("io_uring-recv: probing multishot recv: %s", strerror(-ret));
		int res = cqe->res;
		unsigned flags = cqe->flags;
		return_buffer(s, flags);
		io_uring_cqe_seen(&s->ring, cqe);
		more = flags & IORING_CQE_F_MORE;
		if (first && res == -EINVAL)
			lacks(&multishot_recv);
		if (first && (res != 1 || !more))
			die("io_uring-recv: probing multishot recv: got %d%s", res, more ? "" : " and its end");
		if (first)
			close(pair[1]); /* its EOF ends the request */
		first = false;
	}
	close(pair[0]);
}

/* The ring, with room for a completion from every connection at once; exits 2 when the kernel refuses it. */
static void create_ring(struct uring_server *s)
{
	struct io_uring_params params = {
		.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL |
			 IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP,
		.cq_entries = 2 * ((unsigned)s->max_fds > SQ_ENTRIES ? (unsigned)s->max_fds : SQ_ENTRIES),
	};
	int ret = pretend_missing(&defer_taskrun) ? -EINVAL : io_uring_queue_init_params(SQ_ENTRIES, &s->ring, &params);
	if (ret == -EINVAL)
		lacks(&defer_taskrun);
	if (ret < 0) {
		char err[512];
		ev_refused("io_uring-recv", "io_uring_setup", -ret, NULL, err, sizeof(err));
		usage_error("%s", err);
	}
	ret = io_uring_register_ring_fd(&s->ring);
	if (ret < 0)
		die("io_uring-recv: registering the ring's descriptor: %s", strerror(-ret));
}

/* The provided buffers, mapped and registered here (liburing 2.3 lacks io_uring_setup_buf_ring), all given
 * to the ring. */
static void setup_buffer_ring(struct uring_server *s)
{
	s->buf_ring_bytes = BUF_COUNT * sizeof(struct io_uring_buf);
	void *mapped = mmap(NULL, s->buf_ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	s->bufs = malloc((size_t)BUF_COUNT * BUF_SIZE);
	if (mapped == MAP_FAILED || !s->bufs)
		die("io_uring-recv: out of memory for %u buffers of %u bytes", BUF_COUNT, BUF_SIZE);
	s->buf_ring = mapped;
	struct io_uring_buf_reg reg = {
		.ring_addr = (uint64_t)(uintptr_t)s->buf_ring,
		.ring_entries = BUF_COUNT,
		.bgid = BUF_GROUP,
	};
	int ret = pretend_missing(&buffer_rings) ? -EINVAL : io_uring_register_buf_ring(&s->ring, &reg, 0);
	if (ret == -EINVAL)
		lacks(&buffer_rings);
	if (ret < 0)
		die("io_uring-recv: registering the buffer ring: %s", strerror(-ret));
	io_uring_buf_ring_init(s->buf_ring);
	for (unsigned i = 0; i < BUF_COUNT; i++)
		io_uring_buf_ring_add(s->buf_ring, buffer_bytes(s, i), BUF_SIZE, (unsigned short)i,
				      io_uring_buf_ring_mask(BUF_COUNT), (int)i);
	io_uring_buf_ring_advance(s->buf_ring, BUF_COUNT);
}

/* EPHTTPD_URING_FIXED_FILES=1: a sparse table of direct descriptors, which counts against the descriptor
 * limit with the process's own descriptors. */
static void register_direct_table(struct uring_server *s)
{
	s->max_fds = s->max_fds > 2 * OWN_FDS ? s->max_fds - OWN_FDS : s->max_fds / 2;
	int ret = io_uring_register_files_sparse(&s->ring, (unsigned)s->max_fds);
	if (ret < 0)
		die("io_uring-recv: a table of %d direct descriptors: %s", s->max_fds, strerror(-ret));
}

static void setup_ring(struct uring_server *s)
{
	create_ring(s);
	setup_buffer_ring(s);
	probe_multishot_recv(s);
	if (s->fixed)
		register_direct_table(s);
}

struct uring_server *uring_server_create(const struct options *o, int listen_fd, int max_fds)
{
	(void)o;
	struct uring_server *s = calloc(1, sizeof(*s));
	struct uslot *slots = calloc((size_t)max_fds, sizeof(*slots));
	if (!s || !slots)
		die("out of memory for %d connections", max_fds);
	for (int fd = 0; fd < max_fds; fd++)
		conn_init(&slots[fd].http);
	s->slots = slots;
	s->max_fds = max_fds;
	s->listen_fd = listen_fd;
	s->wake_fd = -1;
	s->reserve_fd = -1;
	const char *fixed = getenv(FIXED_ENV);
	s->fixed = fixed && strcmp(fixed, "1") == 0;
	setup_ring(s);
	s->stats.pid = (int32_t)getpid();
	s->stats.ring_counters = 1;
	if (listen_fd < 0)
		return s; /* a probe of the kernel's features (workers.c) */

	open_wake_and_reserve(&s->wake_fd, &s->reserve_fd);
	arm_wake(s);
	arm_accept(s);
	return s;
}

void uring_server_destroy(struct uring_server *s)
{
	for (int fd = 0; fd < s->max_fds; fd++) {
		if (s->slots[fd].open && !s->fixed)
			close(fd);
		conn_free(&s->slots[fd].http);
		free(s->slots[fd].out);
	}
	io_uring_queue_exit(&s->ring); /* cancels what is armed, frees the direct table and the buffer group */
	munmap(s->buf_ring, s->buf_ring_bytes);
	free(s->bufs);
	close_wake_and_reserve(s->wake_fd, s->reserve_fd);
	free(s->slots);
	free(s);
}

int uring_server_run(struct uring_server *s, int worker, struct worker_stats **stats)
{
	int status = 0;
	*stats = &s->stats;
	sigprocmask(SIG_SETMASK, &unblocked_signals, NULL);
	while (!stop_requested) {
		int ret = io_uring_submit_and_wait(&s->ring, 1);
		if (ret < 0 && ret != -EINTR) {
			fprintf(stderr, "ephttpd: io_uring-recv: submit and wait failed: %s\n", strerror(-ret));
			status = 1;
			break;
		}
		if (ret > 0)
			s->stats.submissions += (uint64_t)ret;
		if (reap(s) > 0)
			s->stats.wait_calls++;
		if (snapshot_requested) {
			snapshot_requested = 0;
			/* What the counters say is done (a close, a shutdown) reaches the kernel first. */
			ret = io_uring_submit(&s->ring);
			if (ret > 0)
				s->stats.submissions += (uint64_t)ret;
			print_snapshot(&s->stats, worker, NULL);
		}
	}
	take_cpu_times(&s->stats);
	return status;
}
