/* ev_armed.c - the completion backends' registry of armed descriptors (ev_armed.h). */
#include <errno.h>
#include <stdlib.h>

#include "ev_armed.h"

int ev_armed_init(struct ev_armed *r, int max_fds)
{
	*r = (struct ev_armed){ .max_fds = max_fds };
	r->fds = calloc((size_t)max_fds, sizeof(*r->fds));
	r->queue = calloc((size_t)max_fds, sizeof(*r->queue));
	if (!r->fds || !r->queue) {
		ev_armed_free(r);
		return -ENOMEM;
	}
	return 0;
}

void ev_armed_free(struct ev_armed *r)
{
	free(r->fds);
	free(r->queue);
	r->fds = NULL;
	r->queue = NULL;
}

void ev_armed_queue(struct ev_armed *r, int fd)
{
	if (!r->fds[fd].queued) {
		r->fds[fd].queued = true;
		r->queue[r->queue_count++] = fd;
	}
}

int ev_armed_add(struct ev_armed *r, int fd, unsigned events)
{
	if (fd < 0 || fd >= r->max_fds)
		return -ERANGE;
	struct ev_armed_fd *f = &r->fds[fd];
	if (f->registered)
		return -EEXIST;
	f->registered = true;
	f->interest = events;
	ev_armed_queue(r, fd);
	return 0;
}

struct ev_armed_fd *ev_armed_find(struct ev_armed *r, int fd)
{
	if (fd < 0 || fd >= r->max_fds || !r->fds[fd].registered)
		return NULL;
	return &r->fds[fd];
}

void ev_armed_retire(struct ev_armed *r, int fd)
{
	r->fds[fd].armed = false;
	r->fds[fd].generation++;
}

uint64_t ev_armed_tag(const struct ev_armed *r, int fd)
{
	return (uint64_t)r->fds[fd].generation << 32 | (uint32_t)fd;
}

int ev_armed_current(const struct ev_armed *r, uint64_t tag)
{
	uint32_t fd = (uint32_t)tag;
	if (fd >= (uint32_t)r->max_fds)
		return -1;
	const struct ev_armed_fd *f = &r->fds[fd];
	if (!f->registered || !f->armed || (uint32_t)(tag >> 32) != f->generation)
		return -1;
	return (int)fd;
}
