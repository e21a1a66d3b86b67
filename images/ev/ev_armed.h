/*
 * ev_armed.h - the registry of the completion backends (io_uring, aio-poll):
 * which descriptors are watched and for what, which have a poll request armed
 * in the kernel, which wait to be armed at the next wait, and each one's
 * generation.  Private to images/ev.
 *
 * A poll request carries its descriptor and generation in its 64-bit tag
 * (io_uring's user_data, AIO's aio_data).  Changing or deleting a descriptor
 * retires its request and moves it to a new generation, so a completion the
 * kernel posts for the old request (one it raced to report, or its
 * cancellation) names an older generation and is dropped: ev_armed_current
 * answers only for the tag of the request now armed.
 */
#ifndef EV_ARMED_H
#define EV_ARMED_H

#include <stdbool.h>
#include <stdint.h>

struct ev_armed_fd {
	unsigned interest; /* EV_READ | EV_WRITE */
	uint32_t generation;
	bool registered;
	bool armed;  /* a request of this generation is queued to the kernel or in it */
	bool queued; /* in the arm queue */
};

struct ev_armed {
	int max_fds;
	struct ev_armed_fd *fds;
	int *queue; /* descriptors to arm at the next wait */
	int queue_count;
};

/* 0, or -ENOMEM. */
int ev_armed_init(struct ev_armed *r, int max_fds);
void ev_armed_free(struct ev_armed *r);

/* ev_add's bookkeeping: registers fd for events and queues it to be armed.
 * -ERANGE beyond max_fds, -EEXIST when registered already. */
int ev_armed_add(struct ev_armed *r, int fd, unsigned events);
/* The descriptor ev_modify or ev_delete names, or NULL (-ENOENT for the caller). */
struct ev_armed_fd *ev_armed_find(struct ev_armed *r, int fd);
/* After the backend retired fd's request (if it was armed): a new generation. */
void ev_armed_retire(struct ev_armed *r, int fd);
void ev_armed_queue(struct ev_armed *r, int fd);

uint64_t ev_armed_tag(const struct ev_armed *r, int fd);
/* The descriptor a completion's tag names when its request is the one armed
 * now, else -1 (a stale completion, or a tag that names no descriptor). */
int ev_armed_current(const struct ev_armed *r, uint64_t tag);

#endif
