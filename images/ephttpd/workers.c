/*
 * workers.c - a worker's whole life on either loop (serve_worker), and
 * --workers N: the parent forks N workers, each with its own loop and
 * SO_REUSEPORT listener, then only waits: it forwards SIGTERM/SIGINT and
 * SIGUSR1, and at the end sums the stats each worker sends through a pipe.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "parts.h"
#include "ev.h"

static void on_child_exit(int sig)
{
	(void)sig; /* only so that SIGCHLD ends the parent's sigsuspend; waitpid finds who exited */
}

static void signal_workers(const pid_t *pids, int count, int sig)
{
	for (int i = 0; i < count; i++)
		if (pids[i] > 0)
			kill(pids[i], sig);
}

static int index_of(const pid_t *pids, int count, pid_t pid)
{
	for (int i = 0; i < count; i++)
		if (pids[i] == pid)
			return i;
	return -1;
}

static void describe_exit(char *buf, size_t size, int wstatus)
{
	if (WIFSIGNALED(wstatus))
		snprintf(buf, size, "was killed by signal %d", WTERMSIG(wstatus));
	else
		snprintf(buf, size, "exited with status %d", WEXITSTATUS(wstatus));
}

static _Noreturn void run_child(const struct options *o, int worker, const int *listeners,
				const int *stats_reads, int stats_write, int fd_limit, pid_t parent)
{
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() != parent)
		_exit(1);
	for (int i = 0; i < o->workers; i++)
		if (i != worker)
			close(listeners[i]);
	for (int i = 0; i < worker; i++)
		close(stats_reads[i]);
	struct worker_stats stats;
	int status = serve_worker(o, listeners[worker], fd_limit, worker, -1, &stats);
	if (write(stats_write, &stats, sizeof(stats)) != (ssize_t)sizeof(stats))
		status = 1;
	_exit(status);
}

/* What the parent keeps of its workers: a pid (0 once it exited) and the read end of a stats pipe each. */
struct supervisor {
	const struct options *o;
	pid_t pids[MAX_WORKERS];
	int stats_reads[MAX_WORKERS];
	int live;
	bool stopping; /* the workers were told to stop */
	int status;
};

/* A backend the kernel refuses ends the parent with exit 2, before any worker. */
static void probe_backend(const struct options *o, int fd_limit)
{
	if (strcmp(o->backend, URING_RECV_BACKEND) == 0) {
		uring_server_destroy(uring_server_create(o, -1, fd_limit));
		return;
	}
	char err[512];
	struct ev_loop *probe = ev_create(o->backend, fd_limit, err, sizeof(err));
	if (!probe)
		usage_error("%s", err);
	ev_destroy(probe);
}

/* The signals the parent acts on stay blocked but in its sigsuspend, so none slips in between its checks
 * and its wait. */
static void block_signals(void)
{
	install_handler(SIGCHLD, on_child_exit);
	sigset_t blocked;
	sigemptyset(&blocked);
	sigaddset(&blocked, SIGTERM);
	sigaddset(&blocked, SIGINT);
	sigaddset(&blocked, SIGUSR1);
	sigaddset(&blocked, SIGCHLD);
	sigprocmask(SIG_BLOCK, &blocked, NULL);
}

static void fork_workers(struct supervisor *sv, const int *listeners, int fd_limit)
{
	pid_t parent = getpid();
	for (int i = 0; i < sv->o->workers; i++) {
		int p[2];
		if (pipe2(p, O_CLOEXEC) < 0)
			die("pipe: %s", strerror(errno));
		pid_t pid = fork();
		if (pid < 0)
			die("fork: %s", strerror(errno));
		if (pid == 0) {
			close(p[0]);
			run_child(sv->o, i, listeners, sv->stats_reads, p[1], fd_limit, parent);
		}
		close(p[1]);
		sv->pids[i] = pid;
		sv->stats_reads[i] = p[0];
	}
	for (int i = 0; i < sv->o->workers; i++)
		close(listeners[i]);
}

static void stop_workers(struct supervisor *sv)
{
	if (!sv->stopping) {
		sv->stopping = true;
		signal_workers(sv->pids, sv->o->workers, SIGTERM);
	}
}

/* A worker exited: one that did before it was told to, or failed, is reported and stops the others. */
static void note_exit(struct supervisor *sv, pid_t pid, int wstatus)
{
	int i = index_of(sv->pids, sv->o->workers, pid);
	if (i < 0)
		return;
	sv->pids[i] = 0;
	sv->live--;
	if (!sv->stopping || !WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
		char how[64];
		describe_exit(how, sizeof(how), wstatus);
		fprintf(stderr, "ephttpd: worker %d (pid %d) %s%s\n", i, (int)pid, how,
			sv->stopping ? "" : "; stopping the others");
		sv->status = 1;
	}
	stop_workers(sv);
}

/* Until every worker exited: forwards SIGTERM/SIGINT and SIGUSR1, notes the exits, sleeps in sigsuspend. */
static void supervise(struct supervisor *sv)
{
	while (sv->live > 0) {
		if (stop_requested)
			stop_workers(sv);
		if (snapshot_requested) {
			snapshot_requested = 0;
			signal_workers(sv->pids, sv->o->workers, SIGUSR1);
		}
		int wstatus;
		pid_t pid;
		while ((pid = waitpid(-1, &wstatus, WNOHANG)) > 0)
			note_exit(sv, pid, wstatus);
		if (sv->live > 0)
			sigsuspend(&unblocked_signals);
	}
}

/* Sums the stats each worker sent and prints the one stats line; a worker that sent none fails the run. */
static void collect_stats(struct supervisor *sv, int fd_limit)
{
	struct worker_stats per_worker[MAX_WORKERS];
	int reported = 0;
	for (int i = 0; i < sv->o->workers; i++) {
		struct worker_stats st;
		if (read(sv->stats_reads[i], &st, sizeof(st)) == (ssize_t)sizeof(st))
			per_worker[reported++] = st;
		else
			sv->status = 1;
		close(sv->stats_reads[i]);
	}
	print_stats(sv->o, fd_limit, per_worker, reported, NULL);
}

/*
 * The parent forks the workers, then only waits: it forwards SIGTERM/SIGINT
 * and SIGUSR1, and at the end sums the stats each worker sends through a pipe.
 */
int run_workers(const struct options *o, const int *listeners, int port, int fd_limit)
{
	struct supervisor sv = { .o = o, .live = o->workers };
	probe_backend(o, fd_limit);
	block_signals();
	announce(o, port, 0, fd_limit);
	fork_workers(&sv, listeners, fd_limit);
	supervise(&sv);
	collect_stats(&sv, fd_limit);
	return sv.status;
}

int serve_worker(const struct options *o, int listen_fd, int max_fds, int worker, int port,
		 struct worker_stats *out)
{
	struct worker_stats *stats;
	int status;
	if (strcmp(o->backend, URING_RECV_BACKEND) == 0) {
		struct uring_server *s = uring_server_create(o, listen_fd, max_fds);
		if (port >= 0)
			announce(o, port, 0, max_fds);
		status = uring_server_run(s, worker, &stats);
		*out = *stats;
		uring_server_destroy(s);
	} else {
		struct server *s = server_create(o, listen_fd, max_fds);
		if (port >= 0)
			announce(o, port, 0, max_fds);
		status = server_run(s, worker, &stats);
		*out = *stats;
		server_destroy(s);
	}
	return status;
}
