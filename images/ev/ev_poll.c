/*
 * ev_poll.c - poll(2).  The pollfd array is handed to the kernel as is; a
 * fd -> slot map makes add, modify and delete O(1) (delete moves the last
 * slot into the hole), so the only O(n) work per wait is the kernel's scan
 * and ours of the returned array, both inherent to poll.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ev_backend.h"

struct poll_state {
	struct pollfd *fds;
	int count;
	int max_fds;
	int *slot_of_fd; /* -1: not registered */
	int next_scan;   /* slot after the last one reported, so a full out[] starves no one */
};

static short poll_mask(unsigned events)
{
	return (short)(((events & EV_READ) ? POLLIN : 0) | ((events & EV_WRITE) ? POLLOUT : 0));
}

static void *poll_create(int max_fds, char *err, size_t errlen)
{
	struct poll_state *s = calloc(1, sizeof(*s));
	if (s) {
		s->max_fds = max_fds;
		s->fds = calloc((size_t)max_fds, sizeof(*s->fds));
		s->slot_of_fd = malloc((size_t)max_fds * sizeof(*s->slot_of_fd));
	}
	if (!s || !s->fds || !s->slot_of_fd) {
		snprintf(err, errlen, "poll: out of memory for %d descriptors", max_fds);
		if (s) {
			free(s->fds);
			free(s->slot_of_fd);
			free(s);
		}
		return NULL;
	}
	memset(s->slot_of_fd, 0xff, (size_t)max_fds * sizeof(*s->slot_of_fd));
	return s;
}

static int poll_add(void *state, int fd, unsigned events)
{
	struct poll_state *s = state;
	if (fd < 0 || fd >= s->max_fds)
		return -ERANGE;
	if (s->slot_of_fd[fd] >= 0)
		return -EEXIST;
	s->slot_of_fd[fd] = s->count;
	s->fds[s->count++] = (struct pollfd){ .fd = fd, .events = poll_mask(events) };
	return 0;
}

static int poll_modify(void *state, int fd, unsigned events)
{
	struct poll_state *s = state;
	if (fd < 0 || fd >= s->max_fds || s->slot_of_fd[fd] < 0)
		return -ENOENT;
	s->fds[s->slot_of_fd[fd]].events = poll_mask(events);
	return 0;
}

static int poll_delete(void *state, int fd)
{
	struct poll_state *s = state;
	if (fd < 0 || fd >= s->max_fds || s->slot_of_fd[fd] < 0)
		return -ENOENT;
	int slot = s->slot_of_fd[fd];
	struct pollfd last = s->fds[--s->count];
	s->fds[slot] = last;
	s->slot_of_fd[last.fd] = slot;
	s->slot_of_fd[fd] = -1;
	return 0;
}

static int poll_wait(void *state, struct ev_event *out, int max, int timeout_ms)
{
	struct poll_state *s = state;
	int ready = poll(s->fds, (nfds_t)s->count, timeout_ms);
	if (ready < 0)
		return -errno;
	int n = 0, slot = s->next_scan < s->count ? s->next_scan : 0;
	/* Stop once every ready slot is seen: poll counts descriptors, not events. */
	for (int scanned = 0; scanned < s->count && ready > 0 && n < max; scanned++) {
		short revents = s->fds[slot].revents;
		int fd = s->fds[slot].fd;
		slot = slot + 1 < s->count ? slot + 1 : 0;
		if (!revents)
			continue;
		ready--;
		unsigned events = 0;
		if (revents & (POLLIN | POLLPRI))
			events |= EV_READ;
		if (revents & POLLOUT)
			events |= EV_WRITE;
		if (revents & (POLLHUP | POLLERR | POLLNVAL))
			events |= EV_ERROR | EV_READ;
		out[n++] = (struct ev_event){ .fd = fd, .events = events };
	}
	s->next_scan = slot;
	return n;
}

static void poll_destroy(void *state)
{
	struct poll_state *s = state;
	free(s->fds);
	free(s->slot_of_fd);
	free(s);
}

const struct ev_backend ev_poll_backend = {
	.name = "poll",
	.create = poll_create,
	.add = poll_add,
	.modify = poll_modify,
	.delete = poll_delete,
	.wait = poll_wait,
	.destroy = poll_destroy,
};
