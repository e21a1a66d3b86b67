/*
 * ev_epoll.c - epoll(7), level-triggered ("epoll") and edge-triggered
 * ("epoll-et").  The two differ only in EPOLLET on every registration, so
 * they share all code and differ in the flag kept in their state.
 *
 * Foreign items (ev.h): an item's data word is the descriptor for the loop's
 * own, and FOREIGN_BIT with the owner's word for a foreign one.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "ev_backend.h"

#define FOREIGN_BIT (UINT64_C(1) << 63)

struct epoll_state {
	int epfd;
	uint32_t trigger; /* 0 or EPOLLET */
	int capacity;
	struct epoll_event *ready;
};

static void *epoll_create_with(uint32_t trigger, const char *name, int max_fds, char *err,
			       size_t errlen)
{
	struct epoll_state *s = calloc(1, sizeof(*s));
	if (!s) {
		snprintf(err, errlen, "%s: out of memory", name);
		return NULL;
	}
	s->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (s->epfd < 0) {
		snprintf(err, errlen, "%s: epoll_create1: %s", name, strerror(errno));
		free(s);
		return NULL;
	}
	s->trigger = trigger;
	s->capacity = max_fds > 0 ? max_fds : 1;
	s->ready = calloc((size_t)s->capacity, sizeof(*s->ready));
	if (!s->ready) {
		snprintf(err, errlen, "%s: out of memory for %d events", name, s->capacity);
		close(s->epfd);
		free(s);
		return NULL;
	}
	return s;
}

static void *epoll_lt_create(int max_fds, char *err, size_t errlen)
{
	return epoll_create_with(0, "epoll", max_fds, err, errlen);
}

static void *epoll_et_create(int max_fds, char *err, size_t errlen)
{
	return epoll_create_with(EPOLLET, "epoll-et", max_fds, err, errlen);
}

static uint32_t epoll_events_of(const struct epoll_state *s, unsigned events)
{
	return ((events & EV_READ) ? EPOLLIN | EPOLLRDHUP : 0) | ((events & EV_WRITE) ? EPOLLOUT : 0) | s->trigger;
}

static int epoll_control(struct epoll_state *s, int op, int fd, unsigned events)
{
	struct epoll_event ev = { .events = epoll_events_of(s, events), .data.u64 = (uint32_t)fd };
	return epoll_ctl(s->epfd, op, fd, &ev) < 0 ? -errno : 0;
}

static int epoll_foreign(void *state, int fd, unsigned events, uint64_t data, int rearm)
{
	struct epoll_state *s = state;
	if (data & FOREIGN_BIT)
		return -EINVAL;
	struct epoll_event ev = { .events = epoll_events_of(s, events) | EPOLLONESHOT, .data.u64 = data | FOREIGN_BIT };
	return epoll_ctl(s->epfd, rearm ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

static int epoll_shared_fd(void *state)
{
	return ((struct epoll_state *)state)->epfd;
}

/* The "tfd:" lines of the epoll file's fdinfo: one per item in the set. */
static long epoll_watched(void *state)
{
	struct epoll_state *s = state;
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", s->epfd);
	FILE *info = fopen(path, "r");
	if (!info)
		return -errno;
	long items = 0;
	while (fgets(line, sizeof(line), info))
		items += strncmp(line, "tfd:", 4) == 0;
	fclose(info);
	return items;
}

static int epoll_add(void *state, int fd, unsigned events)
{
	return epoll_control(state, EPOLL_CTL_ADD, fd, events);
}

static int epoll_modify(void *state, int fd, unsigned events)
{
	return epoll_control(state, EPOLL_CTL_MOD, fd, events);
}

static int epoll_delete(void *state, int fd)
{
	struct epoll_state *s = state;
	return epoll_ctl(s->epfd, EPOLL_CTL_DEL, fd, NULL) < 0 ? -errno : 0;
}

static int epoll_wait_events(void *state, struct ev_event *out, int max, int timeout_ms)
{
	struct epoll_state *s = state;
	if (max > s->capacity)
		max = s->capacity;
	int n = epoll_wait(s->epfd, s->ready, max, timeout_ms);
	if (n < 0)
		return -errno;
	for (int i = 0; i < n; i++) {
		uint32_t got = s->ready[i].events;
		unsigned events = 0;
		if (got & (EPOLLIN | EPOLLPRI))
			events |= EV_READ;
		if (got & EPOLLOUT)
			events |= EV_WRITE;
		if (got & (EPOLLHUP | EPOLLERR | EPOLLRDHUP))
			events |= EV_ERROR | EV_READ;
		uint64_t data = s->ready[i].data.u64;
		if (data & FOREIGN_BIT)
			out[i] = (struct ev_event){ .fd = EV_FOREIGN, .events = events, .data = data & ~FOREIGN_BIT };
		else
			out[i] = (struct ev_event){ .fd = (int)data, .events = events };
	}
	return n;
}

static void epoll_destroy(void *state)
{
	struct epoll_state *s = state;
	close(s->epfd);
	free(s->ready);
	free(s);
}

const struct ev_backend ev_epoll_backend = {
	.name = "epoll",
	.create = epoll_lt_create,
	.add = epoll_add,
	.modify = epoll_modify,
	.delete = epoll_delete,
	.wait = epoll_wait_events,
	.destroy = epoll_destroy,
	.foreign = epoll_foreign,
	.watched = epoll_watched,
	.shared_fd = epoll_shared_fd,
};

const struct ev_backend ev_epoll_et_backend = {
	.name = "epoll-et",
	.create = epoll_et_create,
	.add = epoll_add,
	.modify = epoll_modify,
	.delete = epoll_delete,
	.wait = epoll_wait_events,
	.destroy = epoll_destroy,
	.foreign = epoll_foreign,
	.watched = epoll_watched,
	.shared_fd = epoll_shared_fd,
};
