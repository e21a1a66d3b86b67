/*
 * fdlimit.h - the process's limit on open descriptors, raised as far as it goes.
 */
#ifndef FDLIMIT_H
#define FDLIMIT_H

/* What a program does when the limit cannot be raised. */
enum fd_raise_failure {
	FD_RAISE_OR_EXIT, /* says why and exits 1 */
	FD_RAISE_OR_KEEP, /* says why and goes on under the soft limit */
};

/* Raises RLIMIT_NOFILE's soft limit to the hard one; returns the limit then in force, at most INT_MAX.  A limit
 * that cannot be read ends the program (exit 1); every message is one line on stderr, after "program: ". */
int raise_fd_limit(const char *program, enum fd_raise_failure failure);

#endif
