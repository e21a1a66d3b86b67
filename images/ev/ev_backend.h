/* ev_backend.h - what each ev_<name>.c implements; private to images/ev. */
#ifndef EV_BACKEND_H
#define EV_BACKEND_H

#include "ev.h"

struct ev_backend {
	const char *name;
	/* Returns opaque state, or NULL with the reason in err. */
	void *(*create)(int max_fds, char *err, size_t errlen);
	int (*add)(void *state, int fd, unsigned events);
	int (*modify)(void *state, int fd, unsigned events);
	int (*delete)(void *state, int fd);
	int (*wait)(void *state, struct ev_event *out, int max, int timeout_ms);
	void (*destroy)(void *state);
	/* Foreign items (ev.h); NULL where the backend has none. */
	int (*foreign)(void *state, int fd, unsigned events, uint64_t data, int rearm);
	long (*watched)(void *state);
	int (*shared_fd)(void *state);
};

extern const struct ev_backend ev_select_backend;
extern const struct ev_backend ev_poll_backend;
extern const struct ev_backend ev_epoll_backend;
extern const struct ev_backend ev_epoll_et_backend;
extern const struct ev_backend ev_uring_backend;
extern const struct ev_backend ev_aio_backend;

#endif
