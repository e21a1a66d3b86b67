/*
 * ev_uring.c - io_uring with multishot IORING_OP_POLL_ADD ("io_uring").
 *
 * Every watched descriptor has one multishot poll request (IORING_POLL_ADD_MULTI):
 * armed once, it stays in the kernel and posts a completion, flagged
 * IORING_CQE_F_MORE, at each wakeup of the descriptor for the events watched,
 * so a delivered event costs no new request.  ev_add and ev_modify queue the
 * arming, which goes in with the next wait (io_uring_submit_and_wait); a
 * descriptor that is ready already completes at once.  The kernel ends a
 * multishot request when it cannot post a completion (the completion then
 * lacks IORING_CQE_F_MORE); such a descriptor is armed again at the next wait.
 *
 * Wakeups are edges, but this backend delivers levels like poll and epoll: a
 * descriptor a wait reported and the caller left ready (it read only part)
 * must be reported again with no new wakeup.  So the next wait first looks at
 * the descriptors the last one reported, with one poll() of timeout 0: those
 * still ready are reported again, and the wait does not block.  A descriptor
 * found drained is left to its multishot request, which is woken by whatever
 * arrives after that look.  A completion can name an event the caller has
 * consumed since: callers read until EAGAIN.  This costs one poll() per wait
 * over the descriptors just served, where re-arming a one-shot request for
 * each of them cost a request set up and torn down per event.  Completions come
 * first in a wait's events, then descriptors found still ready, those the
 * previous wait had no room for ahead of those it reported: a descriptor
 * waits for room only while completions alone fill the caller's array.
 *
 * The ring is IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN (with
 * IORING_SETUP_COOP_TASKRUN and IORING_SETUP_TASKRUN_FLAG): a wakeup's
 * completion is posted when the loop next enters the kernel to wait, instead
 * of by task work that interrupts the loop wherever it is (an IPI when the
 * wakeup comes from another CPU).  An enter then does the work of a bounded
 * number of wakeups (since 6.13: 20, and 1 after sleeping) and flags
 * IORING_SQ_TASKRUN while more is pending, so the wait enters again to
 * collect the rest, as far as the caller's array has room: one wait still
 * returns every descriptor ready at the time.  SINGLE_ISSUER makes a loop
 * usable only by the thread that created it.  Kernels before 6.1 refuse
 * DEFER_TASKRUN and before 5.19 COOP_TASKRUN (EINVAL); the ring is then set up
 * with what the kernel takes, which costs time per wait, not correctness.
 *
 * Deleting or changing an armed descriptor queues an IORING_OP_POLL_REMOVE,
 * sent with the next wait as well.  Until then the armed request holds its
 * file: a socket closed right after ev_delete is released at the next wait,
 * which an event loop reaches next anyway.  The remove's completion and the
 * removed request's own (-ECANCELED, or events it raced to report) may still
 * be in the completion queue: the registry of armed descriptors (ev_armed.h)
 * knows them for stale by the generation in their user_data.
 */
#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "ev_armed.h"
#include "ev_backend.h"

/* Submission queue size: a wait arming more descriptors submits in chunks. */
#define SQ_ENTRIES 1024u
/* user_data of POLL_REMOVE requests: its fd half names no descriptor. */
#define REMOVE_TAG UINT64_MAX

/* Ring setup flags, the cheapest first; each later set is what an older
 * kernel accepts. */
static const unsigned setup_flags[] = {
	IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_COOP_TASKRUN |
		IORING_SETUP_TASKRUN_FLAG, /* 6.1 */
	IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG, /* 5.19 */
	0,
};

/* What this backend keeps beside the registry: the level emulation's state. */
struct uring_fd {
	bool rechecking;      /* in recheck[] */
	uint32_t reported_in; /* the wait (s->waits) that last put it in out[] ... */
	int slot;             /* ... at this index */
};

struct uring_state {
	struct io_uring ring;
	struct ev_armed armed; /* interest, generation, the multishot POLL_ADDs armed and to arm */
	struct uring_fd *fds;
	int *recheck; /* descriptors to look at again at the next wait */
	int recheck_count;
	struct pollfd *looked; /* the poll() of recheck[] */
	int looked_count;
	uint32_t waits;
};

static unsigned poll_mask_of(unsigned interest)
{
	return ((interest & EV_READ) ? POLLIN : 0) | ((interest & EV_WRITE) ? POLLOUT : 0);
}

/* Why io_uring_setup returned EPERM, if a sysctl explains it. */
static const char *sysctl_refusal(void)
{
	FILE *f = fopen("/proc/sys/kernel/io_uring_disabled", "r");
	int disabled = 0;
	if (f) {
		if (fscanf(f, "%d", &disabled) != 1)
			disabled = 0;
		fclose(f);
	}
	if (disabled == 2)
		return "sysctl kernel.io_uring_disabled=2 disables io_uring for every process";
	if (disabled == 1)
		return "sysctl kernel.io_uring_disabled=1 allows io_uring only to CAP_SYS_ADMIN and the group "
		       "in kernel.io_uring_group";
	return NULL;
}

static void free_state(struct uring_state *s)
{
	ev_armed_free(&s->armed);
	free(s->fds);
	free(s->recheck);
	free(s->looked);
	free(s);
}

static void *uring_create(int max_fds, char *err, size_t errlen)
{
	struct uring_state *s = calloc(1, sizeof(*s));
	if (s) {
		s->fds = calloc((size_t)max_fds, sizeof(*s->fds));
		s->recheck = calloc((size_t)max_fds, sizeof(*s->recheck));
		s->looked = calloc((size_t)max_fds, sizeof(*s->looked));
	}
	if (!s || ev_armed_init(&s->armed, max_fds) < 0 || !s->fds || !s->recheck || !s->looked) {
		snprintf(err, errlen, "io_uring: out of memory for %d descriptors", max_fds);
		if (s)
			free_state(s);
		return NULL;
	}
	int ret = -EINVAL;
	for (size_t i = 0; i < sizeof(setup_flags) / sizeof(setup_flags[0]) && ret == -EINVAL; i++) {
		/* Room for a completion from every descriptor at once, so the
		 * kernel seldom has to park completions on its overflow list. */
		struct io_uring_params params = {
			.flags = setup_flags[i] | IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP,
			.cq_entries = (unsigned)max_fds > SQ_ENTRIES ? (unsigned)max_fds : SQ_ENTRIES,
		};
		ret = io_uring_queue_init_params(SQ_ENTRIES, &s->ring, &params);
	}
	if (ret < 0) {
		ev_refused("io_uring", "io_uring_setup", -ret, ret == -EPERM ? sysctl_refusal() : NULL, err, errlen);
		free_state(s);
		return NULL;
	}
	return s;
}

static struct io_uring_sqe *next_sqe(struct uring_state *s)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
	if (!sqe) {
		io_uring_submit(&s->ring);
		sqe = io_uring_get_sqe(&s->ring);
	}
	return sqe;
}

static void queue_recheck(struct uring_state *s, int fd)
{
	if (!s->fds[fd].rechecking) {
		s->fds[fd].rechecking = true;
		s->recheck[s->recheck_count++] = fd;
	}
}

/* Retires the armed request, if any, and moves fd to a new generation. */
static int disarm(struct uring_state *s, int fd)
{
	if (s->armed.fds[fd].armed) {
		struct io_uring_sqe *sqe = next_sqe(s);
		if (!sqe)
			return -EBUSY;
		io_uring_prep_poll_remove(sqe, ev_armed_tag(&s->armed, fd));
		io_uring_sqe_set_data64(sqe, REMOVE_TAG);
	}
	ev_armed_retire(&s->armed, fd);
	return 0;
}

static int uring_add(void *state, int fd, unsigned events)
{
	struct uring_state *s = state;
	return ev_armed_add(&s->armed, fd, events);
}

static int uring_modify(void *state, int fd, unsigned events)
{
	struct uring_state *s = state;
	struct ev_armed_fd *f = ev_armed_find(&s->armed, fd);
	if (!f)
		return -ENOENT;
	int ret = disarm(s, fd);
	if (ret < 0)
		return ret;
	f->interest = events;
	ev_armed_queue(&s->armed, fd);
	return 0;
}

static int uring_delete(void *state, int fd)
{
	struct uring_state *s = state;
	struct ev_armed_fd *f = ev_armed_find(&s->armed, fd);
	if (!f)
		return -ENOENT;
	int ret = disarm(s, fd);
	if (ret < 0)
		return ret;
	f->registered = false;
	return 0;
}

static int arm_queued(struct uring_state *s)
{
	struct ev_armed *r = &s->armed;
	while (r->queue_count > 0) {
		int fd = r->queue[r->queue_count - 1];
		struct ev_armed_fd *f = &r->fds[fd];
		if (f->registered && !f->armed) {
			struct io_uring_sqe *sqe = next_sqe(s);
			if (!sqe)
				return -EBUSY; /* the queue stays for the next wait */
			io_uring_prep_poll_multishot(sqe, fd, poll_mask_of(f->interest));
			io_uring_sqe_set_data64(sqe, ev_armed_tag(r, fd));
			f->armed = true;
		}
		f->queued = false;
		r->queue_count--;
	}
	return 0;
}

/* Looks at recheck[] without changing it; returns how many are still ready. */
static int look_again(struct uring_state *s)
{
	int count = 0;
	for (int i = 0; i < s->recheck_count; i++) {
		int fd = s->recheck[i];
		const struct ev_armed_fd *f = &s->armed.fds[fd];
		if (f->registered)
			s->looked[count++] = (struct pollfd){ .fd = fd, .events = (short)poll_mask_of(f->interest) };
	}
	s->looked_count = count;
	if (count == 0)
		return 0;
	int ready = poll(s->looked, (nfds_t)count, 0);
	return ready < 0 ? -errno : ready;
}

static unsigned events_of(int res)
{
	if (res < 0)
		return EV_ERROR | EV_READ;
	unsigned events = 0;
	if (res & (POLLIN | POLLPRI))
		events |= EV_READ;
	if (res & POLLOUT)
		events |= EV_WRITE;
	if (res & (POLLHUP | POLLERR | POLLNVAL))
		events |= EV_ERROR | EV_READ;
	return events;
}

/* Puts fd in out[] (merged with its entry if this wait has one) when there is
 * room, and in the next wait's recheck[] either way. */
static void report(struct uring_state *s, struct ev_event *out, int max, int *n, int fd, unsigned events)
{
	struct uring_fd *f = &s->fds[fd];
	queue_recheck(s, fd);
	if (f->reported_in == s->waits && f->slot < *n && out[f->slot].fd == fd) {
		out[f->slot].events |= events;
	} else if (*n < max) {
		f->reported_in = s->waits;
		f->slot = *n;
		out[(*n)++] = (struct ev_event){ .fd = fd, .events = events };
	}
}

/* Moves current-generation completions to out while there is room. */
static void reap(struct uring_state *s, struct ev_event *out, int max, int *n)
{
	struct io_uring_cqe *cqe;
	unsigned head, seen = 0;
	io_uring_for_each_cqe(&s->ring, head, cqe) {
		if (*n == max)
			break;
		seen++;
		/* A POLL_REMOVE's own completion names no descriptor; a stale one an old generation. */
		int fd = ev_armed_current(&s->armed, io_uring_cqe_get_data64(cqe));
		if (fd < 0)
			continue;
		if (!(cqe->flags & IORING_CQE_F_MORE)) {
			s->armed.fds[fd].armed = false;
			ev_armed_queue(&s->armed, fd);
		}
		unsigned events = events_of(cqe->res);
		if (events)
			report(s, out, max, n, fd, events);
	}
	io_uring_cq_advance(&s->ring, seen);
}

/* Fills out from the completions and the descriptors found still ready, and
 * makes recheck[] the list for the next wait. */
static int collect(struct uring_state *s, struct ev_event *out, int max)
{
	uint32_t previous = s->waits++;
	for (int i = 0; i < s->recheck_count; i++)
		s->fds[s->recheck[i]].rechecking = false;
	s->recheck_count = 0;
	int n = 0;
	reap(s, out, max, &n);
	for (int pass = 0; pass < 2; pass++) {
		/* First those the previous wait had no room for. */
		for (int i = 0; i < s->looked_count; i++) {
			const struct pollfd *p = &s->looked[i];
			if (p->revents && (pass == 1 || s->fds[p->fd].reported_in != previous))
				report(s, out, max, &n, p->fd, events_of(p->revents));
		}
	}
	s->looked_count = 0;
	return n;
}

/*
 * Has the kernel post the completions it left pending, while there is room
 * for them.  IORING_SQ_TASKRUN can outlive the work it announced (set by a
 * wakeup racing with the run that does its work): a round that posts nothing
 * ends the collecting, else the loop would spin until the next wakeup.
 */
static void collect_pending(struct uring_state *s, int max)
{
	unsigned ready = io_uring_cq_ready(&s->ring);
	while ((IO_URING_READ_ONCE(*s->ring.sq.kflags) & IORING_SQ_TASKRUN) && ready < (unsigned)max &&
	       io_uring_get_events(&s->ring) >= 0) {
		unsigned now = io_uring_cq_ready(&s->ring);
		if (now == ready)
			break;
		ready = now;
	}
}

static int uring_wait(void *state, struct ev_event *out, int max, int timeout_ms)
{
	struct uring_state *s = state;
	for (;;) {
		int ret = arm_queued(s);
		if (ret < 0)
			return ret;
		int still_ready = look_again(s);
		if (still_ready < 0)
			return still_ready;
		if (still_ready > 0 || timeout_ms == 0) {
			ret = io_uring_submit_and_get_events(&s->ring);
		} else if (timeout_ms < 0) {
			ret = io_uring_submit_and_wait(&s->ring, 1);
		} else {
			struct io_uring_cqe *cqe;
			struct __kernel_timespec timeout = {
				.tv_sec = timeout_ms / 1000,
				.tv_nsec = (long long)(timeout_ms % 1000) * 1000000,
			};
			ret = io_uring_submit_and_wait_timeout(&s->ring, &cqe, 1, &timeout, NULL);
			if (ret == -ETIME)
				ret = 0;
		}
		if (ret < 0)
			return ret;
		collect_pending(s, max);
		int n = collect(s, out, max);
		/* Only stale completions woke us: with no time limit, wait on. */
		if (n > 0 || timeout_ms >= 0)
			return n;
	}
}

static void uring_destroy(void *state)
{
	struct uring_state *s = state;
	io_uring_queue_exit(&s->ring);
	free_state(s);
}

const struct ev_backend ev_uring_backend = {
	.name = "io_uring",
	.create = uring_create,
	.add = uring_add,
	.modify = uring_modify,
	.delete = uring_delete,
	.wait = uring_wait,
	.destroy = uring_destroy,
};
