/*
 * ev_select.c - select(2).  The interest sets are kept as fd_sets and copied
 * for each call, because select overwrites its arguments; descriptors at or
 * above FD_SETSIZE cannot be expressed and are refused with -ERANGE.  The scan
 * of 0..highest fd after each call is the cost select inherently imposes.
 * select has no bit for hang-up: it shows as EV_READ alone, and the read
 * that follows returns 0 or the error.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/select.h>

#include "ev_backend.h"

struct select_state {
	fd_set want_read, want_write;
	int highest_fd; /* -1: none registered */
	int next_scan;  /* descriptor after the last one reported, so a full out[] starves no one */
	unsigned char *registered; /* indexed by fd, FD_SETSIZE entries */
};

static void *select_create(int max_fds, char *err, size_t errlen)
{
	(void)max_fds;
	struct select_state *s = calloc(1, sizeof(*s));
	if (s)
		s->registered = calloc(FD_SETSIZE, 1);
	if (!s || !s->registered) {
		snprintf(err, errlen, "select: out of memory");
		free(s);
		return NULL;
	}
	FD_ZERO(&s->want_read);
	FD_ZERO(&s->want_write);
	s->highest_fd = -1;
	return s;
}

static void select_set(struct select_state *s, int fd, unsigned events)
{
	if (events & EV_READ)
		FD_SET(fd, &s->want_read);
	else
		FD_CLR(fd, &s->want_read);
	if (events & EV_WRITE)
		FD_SET(fd, &s->want_write);
	else
		FD_CLR(fd, &s->want_write);
}

static int select_add(void *state, int fd, unsigned events)
{
	struct select_state *s = state;
	if (fd < 0 || fd >= FD_SETSIZE)
		return -ERANGE;
	if (s->registered[fd])
		return -EEXIST;
	s->registered[fd] = 1;
	select_set(s, fd, events);
	if (fd > s->highest_fd)
		s->highest_fd = fd;
	return 0;
}

static int select_modify(void *state, int fd, unsigned events)
{
	struct select_state *s = state;
	if (fd < 0 || fd >= FD_SETSIZE || !s->registered[fd])
		return -ENOENT;
	select_set(s, fd, events);
	return 0;
}

static int select_delete(void *state, int fd)
{
	struct select_state *s = state;
	if (fd < 0 || fd >= FD_SETSIZE || !s->registered[fd])
		return -ENOENT;
	s->registered[fd] = 0;
	select_set(s, fd, 0);
	/* Amortised: only walks down past descriptors that are gone. */
	while (s->highest_fd >= 0 && !s->registered[s->highest_fd])
		s->highest_fd--;
	return 0;
}

static int select_wait(void *state, struct ev_event *out, int max, int timeout_ms)
{
	struct select_state *s = state;
	fd_set readable = s->want_read, writable = s->want_write;
	struct timeval timeout = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
	int ready = select(s->highest_fd + 1, &readable, &writable, NULL, timeout_ms < 0 ? NULL : &timeout);
	if (ready < 0)
		return -errno;
	int n = 0, span = s->highest_fd + 1, fd = s->next_scan < span ? s->next_scan : 0;
	/* select counts bits, not descriptors; stop once all are accounted for. */
	for (int scanned = 0; scanned < span && ready > 0 && n < max; scanned++) {
		unsigned events = 0;
		if (FD_ISSET(fd, &readable)) {
			events |= EV_READ;
			ready--;
		}
		if (FD_ISSET(fd, &writable)) {
			events |= EV_WRITE;
			ready--;
		}
		if (events)
			out[n++] = (struct ev_event){ .fd = fd, .events = events };
		fd = fd + 1 < span ? fd + 1 : 0;
	}
	s->next_scan = fd;
	return n;
}

static void select_destroy(void *state)
{
	struct select_state *s = state;
	free(s->registered);
	free(s);
}

const struct ev_backend ev_select_backend = {
	.name = "select",
	.create = select_create,
	.add = select_add,
	.modify = select_modify,
	.delete = select_delete,
	.wait = select_wait,
	.destroy = select_destroy,
};
