/*
 * ev.c - picks a backend by name and forwards every call to it.  The loop is
 * just the backend's operations plus its opaque state, as in redis' ae.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ev_backend.h"

struct ev_loop {
	const struct ev_backend *backend;
	void *state;
};

static const struct ev_backend *const backends[] = {
	&ev_select_backend,
	&ev_poll_backend,
	&ev_epoll_backend,
	&ev_epoll_et_backend,
	&ev_uring_backend,
	&ev_aio_backend,
};

const char *ev_backend_at(size_t i)
{
	return i < sizeof(backends) / sizeof(backends[0]) ? backends[i]->name : NULL;
}

const char *ev_backend_names(void)
{
	static char names[128];
	if (!names[0]) {
		size_t used = 0;
		for (size_t i = 0; ev_backend_at(i) && used < sizeof(names); i++)
			used += (size_t)snprintf(names + used, sizeof(names) - used, "%s%s", i ? "|" : "",
						 ev_backend_at(i));
	}
	return names;
}

struct ev_loop *ev_create(const char *name, int max_fds, char *err, size_t errlen)
{
	const struct ev_backend *backend = NULL;
	for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
		if (strcmp(backends[i]->name, name) == 0)
			backend = backends[i];
	if (!backend) {
		snprintf(err, errlen, "unknown backend '%s' (choose %s)", name, ev_backend_names());
		return NULL;
	}
	struct ev_loop *loop = malloc(sizeof(*loop));
	if (!loop) {
		snprintf(err, errlen, "%s: out of memory", name);
		return NULL;
	}
	loop->backend = backend;
	loop->state = backend->create(max_fds, err, errlen);
	if (!loop->state) {
		free(loop);
		return NULL;
	}
	return loop;
}

int ev_add(struct ev_loop *loop, int fd, unsigned events)
{
	return loop->backend->add(loop->state, fd, events);
}

int ev_modify(struct ev_loop *loop, int fd, unsigned events)
{
	return loop->backend->modify(loop->state, fd, events);
}

int ev_delete(struct ev_loop *loop, int fd)
{
	return loop->backend->delete(loop->state, fd);
}

int ev_wait(struct ev_loop *loop, struct ev_event *out, int max, int timeout_ms)
{
	return loop->backend->wait(loop->state, out, max, timeout_ms);
}

int ev_shareable(const struct ev_loop *loop)
{
	return loop->backend->foreign != NULL;
}

int ev_add_foreign(struct ev_loop *loop, int fd, unsigned events, uint64_t data)
{
	if (!loop->backend->foreign)
		return -EOPNOTSUPP;
	return loop->backend->foreign(loop->state, fd, events, data, 0);
}

int ev_rearm_foreign(struct ev_loop *loop, int fd, unsigned events, uint64_t data)
{
	if (!loop->backend->foreign)
		return -EOPNOTSUPP;
	return loop->backend->foreign(loop->state, fd, events, data, 1);
}

int ev_shared_fd(const struct ev_loop *loop)
{
	if (!loop->backend->shared_fd)
		return -EOPNOTSUPP;
	return loop->backend->shared_fd(loop->state);
}

long ev_watched(struct ev_loop *loop)
{
	if (!loop->backend->watched)
		return -EOPNOTSUPP;
	return loop->backend->watched(loop->state);
}

const char *ev_name(const struct ev_loop *loop)
{
	return loop->backend->name;
}

void ev_destroy(struct ev_loop *loop)
{
	if (!loop)
		return;
	loop->backend->destroy(loop->state);
	free(loop);
}
