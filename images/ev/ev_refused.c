/*
 * ev_refused.c - the one-line reason why the kernel refused a backend, for
 * the backends' create and for callers that set up io_uring themselves
 * (ev.h).  Apart from ev.c, which reaches the backends through its table,
 * so that the backends depend on this file and not on ev.c.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "ev.h"

/* Seccomp mode from /proc/self/status: 0 none, 1 strict, 2 filter. */
static int seccomp_mode(void)
{
	FILE *status = fopen("/proc/self/status", "r");
	if (!status)
		return 0;
	char line[256];
	int mode = 0;
	while (fgets(line, sizeof(line), status))
		if (sscanf(line, "Seccomp: %d", &mode) == 1)
			break;
	fclose(status);
	return mode;
}

void ev_refused(const char *backend, const char *syscall_name, int errno_value, const char *why,
		char *err, size_t errlen)
{
	char diagnosis[256] = "";
	if (why)
		snprintf(diagnosis, sizeof(diagnosis), " (%s)", why);
	else if ((errno_value == EPERM || errno_value == ENOSYS) && seccomp_mode() == 2)
		snprintf(diagnosis, sizeof(diagnosis),
			 " (this process runs under a seccomp filter that blocks %s; in docker allow it "
			 "with --security-opt seccomp=<profile>)",
			 syscall_name);
	else if (errno_value == ENOSYS)
		snprintf(diagnosis, sizeof(diagnosis), " (this kernel is built without %s)", syscall_name);
	else if (errno_value == EPERM)
		snprintf(diagnosis, sizeof(diagnosis), " (refused by a security policy: no seccomp filter here, "
						       "so look at the LSM, e.g. SELinux or AppArmor)");
	snprintf(err, errlen, "%s: %s: %s%s", backend, syscall_name, strerror(errno_value), diagnosis);
}
