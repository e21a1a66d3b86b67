/*
 * ev_aio.c - Linux AIO with IOCB_CMD_POLL ("aio-poll", Linux 4.18+), through
 * the raw io_setup/io_submit/io_getevents/io_cancel syscalls.
 *
 * An AIO poll is one-shot (io_uring's POLL_ADD has a multishot form; AIO has
 * none).  Descriptors whose event was delivered are queued and armed again
 * with one io_submit at the start of the next wait, which gives
 * level-triggered delivery; a poll on a descriptor that is still ready
 * completes at once.  Unlike io_uring, AIO cannot submit
 * and wait in one call, so a wait that re-arms costs io_submit + io_getevents.
 *
 * Deleting or changing an armed descriptor cancels its poll with io_cancel
 * (there is nothing to batch it with).  The cancelled poll still posts a
 * completion, which the registry of armed descriptors (ev_armed.h) knows for
 * a stale one by the generation in its aio_data.
 */
#include <errno.h>
#include <linux/aio_abi.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ev_armed.h"
#include "ev_backend.h"

struct aio_state {
	aio_context_t ctx;
	struct ev_armed armed;
	struct iocb *iocbs;   /* each descriptor's poll: io_cancel finds it by this address */
	struct iocb **submit; /* io_submit's argument, built from the arm queue */
	struct io_event *completions;
};

static long io_setup(unsigned nr_events, aio_context_t *ctx)
{
	return syscall(SYS_io_setup, nr_events, ctx);
}

static long io_destroy(aio_context_t ctx)
{
	return syscall(SYS_io_destroy, ctx);
}

static long io_submit(aio_context_t ctx, long nr, struct iocb **iocbs)
{
	return syscall(SYS_io_submit, ctx, nr, iocbs);
}

static long io_cancel(aio_context_t ctx, struct iocb *iocb, struct io_event *result)
{
	return syscall(SYS_io_cancel, ctx, iocb, result);
}

static long io_getevents(aio_context_t ctx, long min_nr, long nr, struct io_event *events,
			 struct timespec *timeout)
{
	return syscall(SYS_io_getevents, ctx, min_nr, nr, events, timeout);
}

static long read_sysctl(const char *path)
{
	FILE *f = fopen(path, "r");
	long value = -1;
	if (f) {
		if (fscanf(f, "%ld", &value) != 1)
			value = -1;
		fclose(f);
	}
	return value;
}

/* Confirms the kernel accepts IOCB_CMD_POLL (io_submit says EINVAL before 4.18). */
static int probe_poll(aio_context_t ctx)
{
	int pipefd[2];
	if (pipe(pipefd) < 0)
		return errno;
	struct iocb probe = {
		.aio_lio_opcode = IOCB_CMD_POLL,
		.aio_fildes = (uint32_t)pipefd[1],
		.aio_buf = POLLOUT,
	};
	struct iocb *list[1] = { &probe };
	struct io_event done;
	int error = 0;
	if (io_submit(ctx, 1, list) != 1)
		error = errno;
	else if (io_getevents(ctx, 1, 1, &done, NULL) != 1)
		error = errno;
	close(pipefd[0]);
	close(pipefd[1]);
	return error;
}

static void free_state(struct aio_state *s)
{
	ev_armed_free(&s->armed);
	free(s->iocbs);
	free(s->submit);
	free(s->completions);
	free(s);
}

static void *aio_create(int max_fds, char *err, size_t errlen)
{
	struct aio_state *s = calloc(1, sizeof(*s));
	if (s) {
		s->iocbs = calloc((size_t)max_fds, sizeof(*s->iocbs));
		s->submit = calloc((size_t)max_fds, sizeof(*s->submit));
		s->completions = calloc((size_t)max_fds, sizeof(*s->completions));
	}
	if (!s || ev_armed_init(&s->armed, max_fds) < 0 || !s->iocbs || !s->submit || !s->completions) {
		snprintf(err, errlen, "aio-poll: out of memory for %d descriptors", max_fds);
		goto fail;
	}
	/* One slot per descriptor: every one may have a poll in flight. */
	if (io_setup((unsigned)max_fds, &s->ctx) < 0) {
		int error = errno;
		char why[200];
		if (error == EAGAIN) {
			snprintf(why, sizeof(why),
				 "sysctl fs.aio-max-nr=%ld with %ld in use has no room for %d more events; "
				 "raise fs.aio-max-nr",
				 read_sysctl("/proc/sys/fs/aio-max-nr"), read_sysctl("/proc/sys/fs/aio-nr"), max_fds);
		}
		ev_refused("aio-poll", "io_setup", error, error == EAGAIN ? why : NULL, err, errlen);
		goto fail;
	}
	int error = probe_poll(s->ctx);
	if (error) {
		ev_refused("aio-poll", "io_submit(IOCB_CMD_POLL)", error,
			   error == EINVAL ? "this kernel predates AIO poll, Linux 4.18" : NULL, err, errlen);
		io_destroy(s->ctx);
		goto fail;
	}
	return s;
fail:
	if (s)
		free_state(s);
	return NULL;
}

/* Cancels the armed poll, if any, and moves fd to a new generation. */
static void disarm(struct aio_state *s, int fd)
{
	if (s->armed.fds[fd].armed) {
		struct io_event unused;
		/* EINVAL: it already completed; its completion is stale now. */
		io_cancel(s->ctx, &s->iocbs[fd], &unused);
	}
	ev_armed_retire(&s->armed, fd);
}

static int aio_add(void *state, int fd, unsigned events)
{
	struct aio_state *s = state;
	return ev_armed_add(&s->armed, fd, events);
}

static int aio_modify(void *state, int fd, unsigned events)
{
	struct aio_state *s = state;
	struct ev_armed_fd *f = ev_armed_find(&s->armed, fd);
	if (!f)
		return -ENOENT;
	disarm(s, fd);
	f->interest = events;
	ev_armed_queue(&s->armed, fd);
	return 0;
}

static int aio_delete(void *state, int fd)
{
	struct aio_state *s = state;
	struct ev_armed_fd *f = ev_armed_find(&s->armed, fd);
	if (!f)
		return -ENOENT;
	disarm(s, fd);
	f->registered = false;
	return 0;
}

static int arm_queued(struct aio_state *s)
{
	struct ev_armed *r = &s->armed;
	long count = 0;
	for (int i = 0; i < r->queue_count; i++) {
		int fd = r->queue[i];
		struct ev_armed_fd *f = &r->fds[fd];
		f->queued = false;
		if (!f->registered)
			continue;
		s->iocbs[fd] = (struct iocb){
			.aio_data = ev_armed_tag(r, fd),
			.aio_lio_opcode = IOCB_CMD_POLL,
			.aio_fildes = (uint32_t)fd,
			.aio_buf = ((f->interest & EV_READ) ? POLLIN : 0) | ((f->interest & EV_WRITE) ? POLLOUT : 0),
		};
		f->armed = true;
		s->submit[count++] = &s->iocbs[fd];
	}
	r->queue_count = 0;
	for (long done = 0; done < count;) {
		long ret = io_submit(s->ctx, count - done, s->submit + done);
		if (ret < 0) {
			int error = errno;
			/* Those not submitted are armed at the next wait. */
			for (long i = done; i < count; i++) {
				int fd = (int)s->submit[i]->aio_fildes;
				r->fds[fd].armed = false;
				ev_armed_queue(r, fd);
			}
			return -error;
		}
		done += ret;
	}
	return 0;
}

static unsigned events_of(int64_t res)
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

static int aio_wait(void *state, struct ev_event *out, int max, int timeout_ms)
{
	struct aio_state *s = state;
	if (max > s->armed.max_fds)
		max = s->armed.max_fds;
	for (;;) {
		int ret = arm_queued(s);
		if (ret < 0)
			return ret;
		struct timespec timeout = { .tv_sec = timeout_ms / 1000, .tv_nsec = (timeout_ms % 1000) * 1000000L };
		long got = io_getevents(s->ctx, 1, max, s->completions, timeout_ms < 0 ? NULL : &timeout);
		if (got < 0)
			return -errno;
		int n = 0;
		for (long i = 0; i < got; i++) {
			int fd = ev_armed_current(&s->armed, s->completions[i].data);
			if (fd < 0)
				continue;
			s->armed.fds[fd].armed = false;
			ev_armed_queue(&s->armed, fd);
			out[n++] = (struct ev_event){ .fd = fd, .events = events_of(s->completions[i].res) };
		}
		/* Only stale completions woke us: with no time limit, wait on. */
		if (n > 0 || timeout_ms >= 0)
			return n;
	}
}

static void aio_destroy(void *state)
{
	struct aio_state *s = state;
	io_destroy(s->ctx);
	free_state(s);
}

const struct ev_backend ev_aio_backend = {
	.name = "aio-poll",
	.create = aio_create,
	.add = aio_add,
	.modify = aio_modify,
	.delete = aio_delete,
	.wait = aio_wait,
	.destroy = aio_destroy,
};
