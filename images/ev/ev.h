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
#include <stdint.h>

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
	int fd;          /* EV_FOREIGN for a foreign item (below) */
	unsigned events;
	uint64_t data;   /* a foreign item's word, as registered; 0 for the loop's own descriptors */
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

/*
 * Writes to err why the kernel refused a system call that sets up a backend,
 * as ev_create reports it: "<backend>: <syscall>: <strerror> (<why>)".  why is
 * the caller's own diagnosis (a sysctl, a limit); when it is NULL, a seccomp
 * filter, a security policy or a kernel built without the syscall is named if
 * that explains errno_value.  For programs that set up such a mechanism
 * themselves, so that their refusals read as ev_create's.
 */
void ev_refused(const char *backend, const char *syscall_name, int errno_value, const char *why,
		char *err, size_t errlen);

/*
 * Sharing the interest set with other processes: foreign items (epoll and
 * epoll-et only).
 *
 * An epoll instance is a file, so a process forked after ev_create holds it
 * too and may register its own descriptors in it; the waiting process's
 * ev_wait then reports them although it does not have them open, so one
 * process can wait on more descriptors than its descriptor limit lets it open.
 * Such descriptors are foreign items:
 *   - ev_add_foreign(loop, fd, events, data) registers the caller's fd,
 *     one-shot (EPOLLONESHOT): reported once, then disabled until its owner
 *     re-arms it with ev_rearm_foreign, so that the waiting process can hand
 *     the event to the owner and wait on while the owner deals with it (a
 *     level-triggered item would otherwise be reported at every wait until
 *     then).  data, below 2^63, is the caller's: it should name the owner and
 *     the descriptor.
 *   - ev_wait reports a foreign item as an event with fd EV_FOREIGN and data
 *     as registered; events as for any descriptor.
 *   - The owner removes an item with ev_delete(loop, fd) before it closes fd.
 *     An owner that dies takes its items out of the set with its descriptors:
 *     the kernel drops an item when the last reference to its file goes.
 * Only one process waits on a shared loop; the others only register.  An
 * item is the pair (file, descriptor number in the process that registered
 * it), so the owners' numbers may coincide with each other's and with the
 * waiter's.  The other backends return -EOPNOTSUPP: select and poll hand the
 * kernel the waiter's own descriptors at every wait (and the kernel refuses
 * more than the waiter's descriptor limit); the io_uring ring is set up
 * IORING_SETUP_SINGLE_ISSUER (ev_uring.c), so the kernel takes submissions
 * from its creator alone, and without that flag several processes would
 * share one submission queue with no lock between them; an AIO context
 * belongs to one address space, which a child of fork does not inherit.
 */
#define EV_FOREIGN (-1)
int ev_add_foreign(struct ev_loop *loop, int fd, unsigned events, uint64_t data);
int ev_rearm_foreign(struct ev_loop *loop, int fd, unsigned events, uint64_t data);
/* Whether this loop's backend takes foreign items. */
int ev_shareable(const struct ev_loop *loop);
/* The descriptor of the shared set, which a process sharing the loop must keep
 * open (it may close all others); -EOPNOTSUPP for the backends above. */
int ev_shared_fd(const struct ev_loop *loop);
/* The items in the kernel's interest set, own and foreign, as the kernel lists
 * them (/proc/self/fdinfo); -errno, -EOPNOTSUPP for the backends above. */
long ev_watched(struct ev_loop *loop);

#endif
