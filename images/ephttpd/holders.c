/*
 * holders.c - --dead-holders N: dead connections held by helper processes in
 * the serving process's own interest set, past the per-process descriptor cap.
 *
 * Why: the 2002 study measured one interest set of up to 60,000 idle (dead)
 * connections beside the active ones.  A host that caps a process at fewer
 * open files (README.md gives the reference host's cap) cannot let one
 * process hold them; but for epoll the cap is not a limit of the mechanism:
 * an epoll instance is a file, a child of fork holds it too, and a descriptor
 * the child registers in it is reported to whoever waits on it.  ev.h offers
 * that as foreign items (ev_add_foreign, ev_rearm_foreign), and this file is
 * how ephttpd uses them: the serving process waits on an interest set of all
 * the dead connections while it has only its own few descriptors open.
 *
 * The model: before the server accepts anything, main forks N holders that
 * share its loop (epoll or epoll-et only: ev_shareable).  A holder closes
 * every descriptor but stderr, the shared set, the dead-connection listener
 * (--dead-port, its own port, so that active and dead connections never mix)
 * and the read end of its channel from the server.  The holders accept from
 * that one listener, each up to its cap (the descriptor limit less
 * HOLDER_RESERVE_FDS), read what a connection sent and register it in the
 * shared set as a foreign item, one-shot, with the data word holder << 32 |
 * descriptor.  Only the serving process waits on the set: an event of a
 * foreign item (data, or the peer closing) goes down that holder's channel
 * as 8 bytes, the holder reads the connection, closes it at EOF or an error
 * and re-arms it otherwise.  A holder's own waits are poll() on its listener
 * and channel, and it never answers a request: bytes on a dead connection are
 * read and dropped.  Which holder takes a connection is the kernel's race
 * between them; the cap alone bounds each.
 *
 * The channel is a blocking pipe made big enough for one message per
 * connection a holder may hold (F_SETPIPE_SZ): a one-shot item is reported at
 * most once until its holder re-arms it, so the channel cannot fill and the
 * server never blocks on it (unless a holder is stopped with that many events
 * pending).
 *
 * Counters: each holder's (accepted, open, closed, refused) live in memory
 * shared with the server, written by the holder alone.  The "dead_holders"
 * member of the snapshot and stats lines gives them, what the server
 * forwarded, and the interest set's size as the kernel lists it (ev_watched:
 * the server's own descriptors and every holder's).  A holder that dies
 * (SIGCHLD) is reported on stderr and in that member, its open connections
 * counted as lost (the kernel closed them, which took them out of the set);
 * the server serves on.  At exit the server ends its holders (SIGTERM) after
 * the stats line.
 *
 * Not measured, not done: the holders' own CPU time (they work when dead
 * connections open and close, not while the load runs); balancing the
 * connections over the holders; more than one worker (--workers 1 only).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "parts.h"
#include "ev.h"

/* Descriptors a holder keeps besides its connections: stderr, the shared set, the listener, its channel,
 * and slack. */
#define HOLDER_RESERVE_FDS 16
/* Accepts per listener wakeup, and channel messages per read. */
#define HOLDER_BATCH 64
/* Reads of one connection per event before the holder re-arms it (a peer that keeps sending). */
#define HOLDER_READS_PER_EVENT 4

/* What the server tells a holder: an event of its connection fd. */
struct forward {
	int32_t fd;
	uint32_t events;
};

/* A holder's counters, written by it alone, read by the server. */
struct holder_counts {
	uint64_t accepted, open, closed, refused;
};

struct holder {
	pid_t pid;
	int channel; /* the write end, in the server */
	bool alive;
	char exit[64]; /* how it ended, once it did */
	uint64_t forwarded, unforwarded, lost;
};

struct holders {
	struct ev_loop *loop;
	int count, port, cap;
	struct holder h[MAX_HOLDERS];
	struct holder_counts *counts; /* shared with the holders */
};

static volatile sig_atomic_t holder_exited;

static void on_holder_exit(int sig)
{
	(void)sig;
	holder_exited = 1;
	wake_loop();
}

static uint64_t get(const uint64_t *counter)
{
	return __atomic_load_n(counter, __ATOMIC_RELAXED);
}

static void add(uint64_t *counter, int64_t delta)
{
	__atomic_store_n(counter, *counter + (uint64_t)delta, __ATOMIC_RELAXED);
}

static int compare_ints(const void *a, const void *b)
{
	return *(const int *)a - *(const int *)b;
}

/* Closes every descriptor but the count in keep (stderr among them). */
static void close_all_but(int *keep, int count)
{
	qsort(keep, (size_t)count, sizeof(*keep), compare_ints);
	unsigned from = 0;
	for (int i = 0; i < count; i++) {
		if ((unsigned)keep[i] > from)
			close_range(from, (unsigned)keep[i] - 1, 0);
		from = (unsigned)keep[i] + 1;
	}
	close_range(from, ~0u, 0);
}

/* Reads what a connection sent; false when it is over (EOF or an error), true when drained or its turn is up. */
static bool drain(int fd)
{
	char buf[4096];
	for (int reads = 0; reads < HOLDER_READS_PER_EVENT; reads++) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		if (n > 0 || (n < 0 && errno == EINTR))
			continue;
		return n < 0 && errno == EAGAIN;
	}
	return true;
}

static void drop(struct ev_loop *loop, int fd, struct holder_counts *c)
{
	ev_delete(loop, fd); /* before close: ev.h */
	close(fd);
	add(&c->open, -1);
	add(&c->closed, 1);
}

static void take_connections(struct ev_loop *loop, int listener, int index, int cap, struct holder_counts *c,
			     bool *reported)
{
	for (int i = 0; i < HOLDER_BATCH && c->open < (uint64_t)cap; i++) {
		int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			return; /* EAGAIN: another holder took it, or the queue is empty */
		}
		add(&c->accepted, 1);
		add(&c->open, 1);
		if (!drain(fd)) {
			close(fd);
			add(&c->open, -1);
			add(&c->closed, 1);
			continue;
		}
		int err = ev_add_foreign(loop, fd, EV_READ, (uint64_t)index << 32 | (uint32_t)fd);
		if (err < 0) {
			/* ENOSPC: fs.epoll.max_user_watches.  Counted, said once. */
			if (!*reported)
				fprintf(stderr, "ephttpd: dead-connection holder %d cannot watch a connection: %s "
						"(refusing such)\n", index, strerror(-err));
			*reported = true;
			close(fd);
			add(&c->open, -1);
			add(&c->refused, 1);
		}
	}
}

/* The events the server forwarded down the channel: each connection is read, then re-armed, or dropped at
 * EOF or an error.  Exits when the server is gone. */
static void serve_forwarded(struct ev_loop *loop, int channel, int index, struct holder_counts *c)
{
	struct forward got[HOLDER_BATCH];
	ssize_t bytes = read(channel, got, sizeof(got));
	if (bytes == 0)
		_exit(0); /* the server is gone */
	for (ssize_t i = 0; bytes > 0 && i < bytes / (ssize_t)sizeof(got[0]); i++) {
		if (drain(got[i].fd))
			ev_rearm_foreign(loop, got[i].fd, EV_READ, (uint64_t)index << 32 | (uint32_t)got[i].fd);
		else
			drop(loop, got[i].fd, c);
	}
}

static _Noreturn void run_holder(struct ev_loop *loop, int index, int listener, int channel, int cap,
				 struct holder_counts *c, pid_t server)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != server)
		_exit(1);
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	signal(SIGUSR1, SIG_IGN);
	signal(SIGCHLD, SIG_DFL);
	sigprocmask(SIG_SETMASK, &unblocked_signals, NULL);
	int keep[] = { STDERR_FILENO, ev_shared_fd(loop), listener, channel };
	close_all_but(keep, (int)(sizeof(keep) / sizeof(keep[0])));

	bool reported = false;
	for (;;) {
		struct pollfd fds[2] = { { .fd = channel, .events = POLLIN },
					 { .fd = listener, .events = POLLIN } };
		/* At its cap a holder leaves the listener to the others. */
		int n = poll(fds, c->open < (uint64_t)cap ? 2 : 1, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			_exit(1);
		}
		if (fds[0].revents)
			serve_forwarded(loop, channel, index, c);
		if (n > 0 && fds[1].revents)
			take_connections(loop, listener, index, cap, c, &reported);
	}
}

/* Forks holder i with its channel, and returns once it has closed what it does not need. */
static void start_holder(struct holders *hs, int i, int listener, pid_t server)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		die("pipe: %s", strerror(errno));
	int want = hs->cap * (int)sizeof(struct forward) + 4096;
	if (fcntl(p[1], F_SETPIPE_SZ, want) < want)
		die("a holder's channel needs a pipe of %d bytes (F_SETPIPE_SZ: %s; see fs.pipe-max-size)", want,
		    strerror(errno));
	/* Only the holder keeps the write end of started: its EOF here says that the holder has closed
	 * what it does not need, so the server announces itself with its holders in their final state. */
	int started[2];
	if (pipe2(started, O_CLOEXEC) < 0)
		die("pipe: %s", strerror(errno));
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0)
		run_holder(hs->loop, i, listener, p[0], hs->cap, &hs->counts[i], server);
	close(started[1]);
	char byte;
	while (read(started[0], &byte, 1) < 0 && errno == EINTR)
		continue;
	close(started[0]);
	close(p[0]);
	hs->h[i] = (struct holder){ .pid = pid, .channel = p[1], .alive = true };
}

struct holders *holders_start(const struct options *o, struct ev_loop *loop, int listener, int port,
			      int fd_limit)
{
	if (!ev_shareable(loop))
		usage_error("--dead-holders needs an interest set other processes can share: --backend epoll or "
			    "epoll-et, not %s (see images/ev/ev.h, foreign items)", ev_name(loop));
	struct holders *hs = calloc(1, sizeof(*hs));
	if (!hs)
		die("out of memory for the holders");
	hs->loop = loop;
	hs->count = o->dead_holders;
	hs->port = port;
	hs->cap = fd_limit - HOLDER_RESERVE_FDS;
	if (hs->cap < 1)
		usage_error("--dead-holders: a descriptor limit of %d leaves a holder no room", fd_limit);
	hs->counts = mmap(NULL, sizeof(*hs->counts) * MAX_HOLDERS, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
			  -1, 0);
	if (hs->counts == MAP_FAILED)
		die("mmap for the holders' counters: %s", strerror(errno));

	install_handler(SIGCHLD, on_holder_exit);
	pid_t server = getpid();
	for (int i = 0; i < hs->count; i++)
		start_holder(hs, i, listener, server);
	close(listener);
	return hs;
}

void holders_forward(struct holders *hs, const struct ev_event *e)
{
	uint64_t index = e->data >> 32;
	if (index >= (uint64_t)hs->count)
		return;
	struct holder *h = &hs->h[index];
	struct forward f = { .fd = (int32_t)(uint32_t)e->data, .events = e->events };
	ssize_t n;
	do
		n = write(h->channel, &f, sizeof(f));
	while (n < 0 && errno == EINTR);
	if (n == (ssize_t)sizeof(f))
		h->forwarded++;
	else
		h->unforwarded++; /* EPIPE: the holder died, and its connections with it */
}

void holders_reap(struct holders *hs)
{
	if (!holder_exited)
		return;
	holder_exited = 0;
	int wstatus;
	pid_t pid;
	while ((pid = waitpid(-1, &wstatus, WNOHANG)) > 0) {
		for (int i = 0; i < hs->count; i++) {
			struct holder *h = &hs->h[i];
			if (h->pid != pid || !h->alive)
				continue;
			h->alive = false;
			h->lost = get(&hs->counts[i].open);
			if (WIFSIGNALED(wstatus))
				snprintf(h->exit, sizeof(h->exit), "killed by signal %d", WTERMSIG(wstatus));
			else
				snprintf(h->exit, sizeof(h->exit), "exited with status %d", WEXITSTATUS(wstatus));
			fprintf(stderr, "ephttpd: dead-connection holder %d (pid %d) %s; its %" PRIu64
					" connections are lost; serving on\n", i, (int)pid, h->exit, h->lost);
		}
	}
}

int holders_json(struct holders *hs, char *buf, size_t size)
{
	uint64_t open = 0, lost = 0;
	int alive = 0;
	for (int i = 0; i < hs->count; i++) {
		open += hs->h[i].alive ? get(&hs->counts[i].open) : 0;
		lost += hs->h[i].lost;
		alive += hs->h[i].alive;
	}
	size_t used = (size_t)snprintf(buf, size,
				       "\"dead_holders\":{\"holders\":%d,\"alive\":%d,\"port\":%d,\"cap\":%d,"
				       "\"interest_set\":%ld,\"open\":%" PRIu64 ",\"lost\":%" PRIu64 ",\"per_holder\":[",
				       hs->count, alive, hs->port, hs->cap, ev_watched(hs->loop), open, lost);
	for (int i = 0; i < hs->count && used < size; i++) {
		const struct holder *h = &hs->h[i];
		const struct holder_counts *c = &hs->counts[i];
		used += (size_t)snprintf(buf + used, size - used,
					 "%s{\"holder\":%d,\"pid\":%d,\"alive\":%s,\"accepted\":%" PRIu64
					 ",\"open\":%" PRIu64 ",\"closed\":%" PRIu64 ",\"refused\":%" PRIu64
					 ",\"forwarded\":%" PRIu64 ",\"unforwarded\":%" PRIu64 ",\"lost\":%" PRIu64
					 ",\"exit\":\"%s\"}",
					 i ? "," : "", i, (int)h->pid, h->alive ? "true" : "false", get(&c->accepted),
					 h->alive ? get(&c->open) : 0, get(&c->closed), get(&c->refused), h->forwarded,
					 h->unforwarded, h->lost, h->exit);
	}
	if (used < size)
		used += (size_t)snprintf(buf + used, size - used, "]}");
	return used < size ? (int)used : -1;
}

void holders_stop(struct holders *hs)
{
	if (!hs)
		return;
	for (int i = 0; i < hs->count; i++) {
		if (hs->h[i].alive)
			kill(hs->h[i].pid, SIGTERM);
		close(hs->h[i].channel);
	}
	for (int i = 0; i < hs->count; i++)
		if (hs->h[i].alive)
			waitpid(hs->h[i].pid, NULL, 0);
	munmap(hs->counts, sizeof(*hs->counts) * MAX_HOLDERS);
	free(hs);
}
