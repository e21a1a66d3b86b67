/*
 * ev_uring.c - io_uring with IORING_OP_POLL_ADD ("io_uring").
 *
 * A poll request is one-shot: it completes once and is gone.  To give the
 * level-triggered delivery of poll and epoll, every descriptor whose event was
 * delivered is queued and armed again at the start of the next wait; the new
 * requests go in with the wait itself (io_uring_submit_and_wait), so a wait
 * costs one io_uring_enter however many descriptors it re-arms.  A request on a
 * descriptor that is still ready completes at once.
 *
 * Deleting or changing an armed descriptor queues an IORING_OP_POLL_REMOVE,
 * sent with the next wait as well.  Until then the armed request holds its
 * file: a socket closed right after ev_delete is released at the next wait,
 * which an event loop reaches next anyway.  The remove's completion and the
 * removed request's own (-ECANCELED, or an event it raced to report) may
 * still be in the completion queue; each request carries the descriptor's
 * generation in its user_data and completions of an older generation are
 * dropped.
 */
#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "ev_backend.h"

/* Submission queue size: a wait re-arming more descriptors submits in chunks. */
#define SQ_ENTRIES 1024u
/* user_data of POLL_REMOVE requests: its fd half names no descriptor. */
#define REMOVE_TAG UINT64_MAX

struct uring_fd {
	unsigned interest; /* EV_READ | EV_WRITE */
	uint32_t generation;
	bool registered;
	bool armed;   /* a POLL_ADD of this generation is queued or in the kernel */
	bool queued;  /* in rearm[] */
};

struct uring_state {
	struct io_uring ring;
	int max_fds;
	struct uring_fd *fds;
	int *rearm; /* descriptors to arm at the next wait */
	int rearm_count;
};

static uint64_t user_data_of(int fd, uint32_t generation)
{
	return (uint64_t)generation << 32 | (uint32_t)fd;
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

static void *uring_create(int max_fds, char *err, size_t errlen)
{
	struct uring_state *s = calloc(1, sizeof(*s));
	if (s) {
		s->fds = calloc((size_t)max_fds, sizeof(*s->fds));
		s->rearm = calloc((size_t)max_fds, sizeof(*s->rearm));
	}
	if (!s || !s->fds || !s->rearm) {
		snprintf(err, errlen, "io_uring: out of memory for %d descriptors", max_fds);
		goto fail;
	}
	s->max_fds = max_fds;
	/* Room for a completion from every descriptor at once, so the kernel
	 * never has to park completions on its overflow list. */
	struct io_uring_params params = {
		.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP,
		.cq_entries = (unsigned)max_fds > SQ_ENTRIES ? (unsigned)max_fds : SQ_ENTRIES,
	};
	int ret = io_uring_queue_init_params(SQ_ENTRIES, &s->ring, &params);
	if (ret < 0) {
		ev_refused("io_uring", "io_uring_setup", -ret, ret == -EPERM ? sysctl_refusal() : NULL, err, errlen);
		goto fail;
	}
	return s;
fail:
	if (s) {
		free(s->fds);
		free(s->rearm);
		free(s);
	}
	return NULL;
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

static void queue_rearm(struct uring_state *s, int fd)
{
	if (!s->fds[fd].queued) {
		s->fds[fd].queued = true;
		s->rearm[s->rearm_count++] = fd;
	}
}

/* Retires the armed request, if any, and moves fd to a new generation. */
static int disarm(struct uring_state *s, int fd)
{
	struct uring_fd *f = &s->fds[fd];
	if (f->armed) {
		struct io_uring_sqe *sqe = next_sqe(s);
		if (!sqe)
			return -EBUSY;
		io_uring_prep_poll_remove(sqe, user_data_of(fd, f->generation));
		io_uring_sqe_set_data64(sqe, REMOVE_TAG);
		f->armed = false;
	}
	f->generation++;
	return 0;
}

static int uring_add(void *state, int fd, unsigned events)
{
	struct uring_state *s = state;
	if (fd < 0 || fd >= s->max_fds)
		return -ERANGE;
	struct uring_fd *f = &s->fds[fd];
	if (f->registered)
		return -EEXIST;
	f->registered = true;
	f->interest = events;
	queue_rearm(s, fd);
	return 0;
}

static int uring_modify(void *state, int fd, unsigned events)
{
	struct uring_state *s = state;
	if (fd < 0 || fd >= s->max_fds || !s->fds[fd].registered)
		return -ENOENT;
	int ret = disarm(s, fd);
	if (ret < 0)
		return ret;
	s->fds[fd].interest = events;
	queue_rearm(s, fd);
	return 0;
}

static int uring_delete(void *state, int fd)
{
	struct uring_state *s = state;
	if (fd < 0 || fd >= s->max_fds || !s->fds[fd].registered)
		return -ENOENT;
	int ret = disarm(s, fd);
	if (ret < 0)
		return ret;
	s->fds[fd].registered = false;
	return 0;
}

static int arm_queued(struct uring_state *s)
{
	while (s->rearm_count > 0) {
		int fd = s->rearm[s->rearm_count - 1];
		struct uring_fd *f = &s->fds[fd];
		if (f->registered && !f->armed) {
			struct io_uring_sqe *sqe = next_sqe(s);
			if (!sqe)
				return -EBUSY; /* the queue stays for the next wait */
			unsigned mask = ((f->interest & EV_READ) ? POLLIN : 0) |
					((f->interest & EV_WRITE) ? POLLOUT : 0);
			io_uring_prep_poll_add(sqe, fd, mask);
			io_uring_sqe_set_data64(sqe, user_data_of(fd, f->generation));
			f->armed = true;
		}
		f->queued = false;
		s->rearm_count--;
	}
	return 0;
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

/* Moves up to max current-generation completions to out; returns how many. */
static int reap(struct uring_state *s, struct ev_event *out, int max)
{
	struct io_uring_cqe *cqe;
	unsigned head, seen = 0;
	int n = 0;
	io_uring_for_each_cqe(&s->ring, head, cqe) {
		if (n == max)
			break;
		seen++;
		uint64_t user_data = io_uring_cqe_get_data64(cqe);
		uint32_t fd = (uint32_t)user_data;
		if (fd >= (uint32_t)s->max_fds)
			continue; /* a POLL_REMOVE's own completion */
		struct uring_fd *f = &s->fds[fd];
		if (!f->registered || !f->armed || (uint32_t)(user_data >> 32) != f->generation)
			continue;
		f->armed = false;
		queue_rearm(s, (int)fd);
		out[n++] = (struct ev_event){ .fd = (int)fd, .events = events_of(cqe->res) };
	}
	io_uring_cq_advance(&s->ring, seen);
	return n;
}

static int uring_wait(void *state, struct ev_event *out, int max, int timeout_ms)
{
	struct uring_state *s = state;
	for (;;) {
		int ret = arm_queued(s);
		if (ret < 0)
			return ret;
		struct io_uring_cqe *cqe;
		if (timeout_ms < 0) {
			ret = io_uring_submit_and_wait(&s->ring, 1);
		} else {
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
		int n = reap(s, out, max);
		/* Only stale completions woke us: with no time limit, wait on. */
		if (n > 0 || timeout_ms >= 0)
			return n;
	}
}

static void uring_destroy(void *state)
{
	struct uring_state *s = state;
	io_uring_queue_exit(&s->ring);
	free(s->fds);
	free(s->rearm);
	free(s);
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
