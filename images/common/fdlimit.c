/*
 * fdlimit.c - the process's limit on open descriptors, raised as far as it
 * goes (fdlimit.h).
 */
#include "fdlimit.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static _Noreturn void fail(const char *program, const char *call)
{
	fprintf(stderr, "%s: %s(RLIMIT_NOFILE): %s\n", program, call, strerror(errno));
	exit(1);
}

int raise_fd_limit(const char *program, enum fd_raise_failure failure)
{
	struct rlimit limit;
	if (getrlimit(RLIMIT_NOFILE, &limit) < 0)
		fail(program, "getrlimit");
	if (limit.rlim_cur < limit.rlim_max) {
		rlim_t soft = limit.rlim_cur;
		limit.rlim_cur = limit.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &limit) < 0) {
			if (failure == FD_RAISE_OR_EXIT)
				fail(program, "setrlimit");
			fprintf(stderr, "%s: cannot raise RLIMIT_NOFILE to %llu (%s); keeping %llu\n", program,
				(unsigned long long)limit.rlim_max, strerror(errno), (unsigned long long)soft);
			limit.rlim_cur = soft;
		}
	}
	return limit.rlim_cur > INT_MAX ? INT_MAX : (int)limit.rlim_cur;
}
