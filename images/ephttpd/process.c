/*
 * process.c - what every part of ephttpd's process uses: its one-line errors,
 * the flags its signal handlers set, and the wake pipe that makes a signal
 * interrupt the loop's wait whatever the backend (parts.h).
 */
#define _GNU_SOURCE /* pipe2 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "parts.h"

volatile sig_atomic_t stop_requested, snapshot_requested;
int wake_write_fd = -1;

void open_wake_and_reserve(int *wake_fd, int *reserve_fd)
{
	int wake[2];
	if (pipe2(wake, O_NONBLOCK | O_CLOEXEC) < 0)
		die("pipe: %s", strerror(errno));
	*wake_fd = wake[0];
	wake_write_fd = wake[1];
	*reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (*reserve_fd < 0)
		die("/dev/null: %s", strerror(errno));
}

void drain_wake_pipe(int wake_fd)
{
	char bytes[256];
	while (read(wake_fd, bytes, sizeof(bytes)) == (ssize_t)sizeof(bytes))
		continue;
}

void close_wake_and_reserve(int wake_fd, int reserve_fd)
{
	if (wake_fd >= 0) {
		close(wake_fd);
		close(wake_write_fd);
		wake_write_fd = -1;
	}
	if (reserve_fd >= 0)
		close(reserve_fd);
}

sigset_t unblocked_signals;

/* One line on stderr; usage_error then exits 2 (bad usage), die exits 1 (anything else). */
static void print_error(const char *fmt, va_list ap)
{
	fputs("ephttpd: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

void usage_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	print_error(fmt, ap);
	va_end(ap);
	exit(2);
}

void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	print_error(fmt, ap);
	va_end(ap);
	exit(1);
}

/*
 * A flag alone could be missed: a signal landing after the loop tested it but
 * before it blocked in ev_wait would not interrupt that wait.  The byte in the
 * pipe wakes it in any case.
 */
void wake_loop(void)
{
	int saved = errno;
	if (wake_write_fd >= 0 && write(wake_write_fd, "", 1) < 0) {
		/* a full pipe wakes the loop just as well */
	}
	errno = saved;
}

static void on_stop_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
	wake_loop();
}

static void on_snapshot_signal(int sig)
{
	(void)sig;
	snapshot_requested = 1;
	wake_loop();
}

void install_handler(int sig, void (*handler)(int))
{
	/* Without SA_RESTART, so that the signal interrupts ev_wait with EINTR. */
	struct sigaction sa = { .sa_handler = handler };
	sigemptyset(&sa.sa_mask);
	if (sigaction(sig, &sa, NULL) < 0)
		die("sigaction(%d): %s", sig, strerror(errno));
}

void install_loop_handlers(void)
{
	signal(SIGPIPE, SIG_IGN); /* a closed stdout or stats pipe is an EPIPE, not a death */
	sigprocmask(SIG_SETMASK, NULL, &unblocked_signals);
	install_handler(SIGTERM, on_stop_signal);
	install_handler(SIGINT, on_stop_signal);
	install_handler(SIGUSR1, on_snapshot_signal);
}
