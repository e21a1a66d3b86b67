/*
 * ev.h - one event-notification interface over select, poll, epoll (level and
 * edge triggered), io_uring (poll-add) and Linux AIO poll (IOCB_CMD_POLL).
 *
 * Modelled on redis' ae: one small file per backend (ev_<name>.c), each filling
 * a struct ev_backend; ev.c selects one by name at run time from a table.  The
 * programs using it never know which backend runs, so they must be correct for
 * both level- and edge-triggered delivery: after a readiness event they read
 * until a short read or EAGAIN (with EV_ERROR: until EOF, since an edge-triggered
 * backend reports a peer's shutdown once), and write until done or EAGAIN.
 *
 * An unknown or unavailable backend is an error (with the reason in err), never
 * a fallback to another one.
 */
#ifndef EV_H
#define EV_H

#include <stddef.h>

#define EV_READ  1u
#define EV_WRITE 2u
/*
 * EV_ERROR: the descriptor hung up or failed; always reported with EV_READ,
 * whatever was asked.  What counts differs by backend, so a caller must read
 * to EOF or an error to learn which it was:
 *   epoll, epoll-et  EPOLLHUP, EPOLLERR and EPOLLRDHUP: also the peer's
 *                    half-close (its FIN) with our side still open;
 *   poll, io_uring,  POLLHUP, POLLERR, POLLNVAL: a full hang-up or an error,
 *   aio-poll         not a half-close (that is EV_READ alone, a read of 0);
 *   select           never: a hang-up or an error shows as EV_READ.
 */
#define EV_ERROR 4u

struct ev_event {
	int fd;
	unsigned events;
};

struct ev_loop;

/* The name of the i-th backend, from 0, in the order of ev.c's table; NULL past the last. */
const char *ev_backend_at(size_t i);
/* "select|poll|epoll|epoll-et|io_uring|aio-poll", for usage messages. */
const char *ev_backend_names(void);

/*
 * Creates a loop for up to max_fds descriptors (numbered below max_fds).
 * Returns NULL with a one-line reason in err when name is unknown or the
 * kernel refuses the backend (e.g. io_uring disabled or blocked by seccomp).
 */
struct ev_loop *ev_create(const char *name, int max_fds, char *err, size_t errlen);

/* Each returns 0 or -errno.  -ERANGE: fd beyond what the backend can watch
 * (select: FD_SETSIZE); the caller refuses that descriptor.
 *
 * ev_delete must come before close(fd): select, poll and the completion
 * backends keep the number registered (the next descriptor to get it would be
 * refused with -EEXIST, or reported events of the old one), and io_uring and
 * aio-poll hold a request on the file until its removal reaches the kernel. */
int ev_add(struct ev_loop *loop, int fd, unsigned events);
int ev_modify(struct ev_loop *loop, int fd, unsigned events);
int ev_delete(struct ev_loop *loop, int fd);

/* Waits up to timeout_ms (-1: no limit).  Returns the number of events stored
 * in out (at most max), or -errno (-EINTR when a signal interrupted it). */
int ev_wait(struct ev_loop *loop, struct ev_event *out, int max, int timeout_ms);

const char *ev_name(const struct ev_loop *loop);
void ev_destroy(struct ev_loop *loop);

#endif
