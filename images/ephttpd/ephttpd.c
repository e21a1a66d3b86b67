/*
 * ephttpd - the HTTP server of epollbench, our version of dphttpd from the
 * 2002 Linux epoll scalability study.
 *
 * What it is: a server that answers every GET with 200 and a body of
 * --msgsize bytes (128 by default, as dphttpd; HEAD with the same head and
 * no body), so that what a load test
 * measures is the cost of event notification and of the socket calls around
 * it, not of producing content.
 *
 * The model: one single-threaded event loop per process (--workers N forks N,
 * each with its own SO_REUSEPORT listener; the parent only waits and sums
 * their stats).  The loop waits through images/ev/ev.h and never knows which
 * backend runs, so every handler is right for level- and edge-triggered
 * delivery alike: read until a short read or EAGAIN (until EOF when the event
 * said hang-up), write until done or EAGAIN, then wait for EV_WRITE alone
 * until the backlog is flushed.  In the common case a keep-alive request
 * costs one recv and one send: a short read means the socket is drained, and
 * all requests pipelined into one read are answered with one send (sendmsg
 * when there are several) of prebuilt responses.  A connection's state is a
 * slot in an array indexed by its descriptor; nothing is allocated per
 * request.  The loop waits without a time limit and keeps no timers, so an
 * idle connection, or a dead one that sent half a request, costs nothing.
 *
 * What it does not do: serve files (every target gets the same body), accept
 * request bodies (a GET or HEAD with one gets 400, other methods 405), time anything
 * out (a client that never finishes its request holds its connection until it
 * closes it), TLS, host names in --bind, or Host header checks.
 *
 * The parts: this file (options, the listener, main), process.c (errors,
 * signals and the wake pipe every part uses), server.c (a
 * worker's event loop: the I/O, the per-event caps and the ready list),
 * uring_loop.c (--backend io_uring-recv: a worker's loop on io_uring's
 * completions, multishot recv into a buffer ring and send SQEs, not ev.h),
 * conn.c (a connection's HTTP state: bytes in, responses or close out, no
 * system calls), http.c (the request parser), workers.c (the supervisor of
 * --workers N), holders.c (--dead-holders N: helper processes that hold dead
 * connections, from a port of their own, in this process's epoll set, so
 * that it waits on more connections than it may open), stats.c (the
 * counters both loops keep, and the JSON lines); parts.h declares what they
 * share.
 *
 * Output: JSON lines on stdout - "listening" once connections are accepted,
 * a "snapshot" per worker on SIGUSR1, and on SIGTERM or SIGINT exactly one
 * "stats" line, then exit 0.  Errors go to stderr.  wait_calls and events
 * count the waits that returned connection or listener events (and any that
 * returned nothing): the wakeups our own signals cause are left out, so that a
 * snapshot of an idle server shows no wakeup at all.  peak_open of several
 * workers is the sum of their peaks, an upper bound of the true peak.  With
 * --dead-holders the listening line adds dead_port, the snapshot and stats
 * lines a "dead_holders" member (holders.c); the holders' connections are
 * not in accepted, open or closed, but their events are in events.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "parts.h"
#include "ev.h"
#include "fdlimit.h"
#include "options.h"

#define DEFAULT_BACKEND "epoll"
#define DEFAULT_BIND    "127.0.0.1" /* loopback: with host networking a wildcard would expose it */
#define DEFAULT_PORT    8080
#define DEFAULT_BACKLOG 2048
#define DEFAULT_MSGSIZE 128
#define DEFAULT_WORKERS 1
#define MAX_MSGSIZE     (64L << 20)
/* One connection's full reads, and accepts, per readiness event (server.c): 64 KiB of requests, and a
 * batch of connects, before the loop turns to the other descriptors. */
#define DEFAULT_READS_PER_EVENT   1
#define DEFAULT_ACCEPTS_PER_EVENT 64

/* ---------------------------------------------------------------- setup */

/* A listening socket; port 0 takes a free one, reported in *bound_port. */
static int open_listener(const struct options *o, int port, bool share_port, int *bound_port)
{
	struct addrinfo hints = {
		.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV,
		.ai_socktype = SOCK_STREAM,
	};
	struct addrinfo *ai;
	char service[16];
	snprintf(service, sizeof(service), "%d", port);
	int rc = getaddrinfo(o->bind, service, &hints, &ai);
	if (rc != 0)
		usage_error("--bind %s: not a numeric IPv4 or IPv6 address (%s)", o->bind, gai_strerror(rc));
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket: %s", strerror(errno));
	int one = 1;
	/* Accepted sockets inherit TCP_NODELAY: no setsockopt per connection. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    (share_port && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) ||
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		die("setsockopt: %s", strerror(errno));
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0)
		die("cannot bind %s port %d: %s (is another server there? --port 0 picks a free port)",
		    o->bind, port, strerror(errno));
	freeaddrinfo(ai);
	if (listen(fd, o->backlog) < 0)
		die("listen: %s", strerror(errno));
	struct sockaddr_storage addr;
	socklen_t len = sizeof(addr);
	if (getsockname(fd, (struct sockaddr *)&addr, &len) < 0)
		die("getsockname: %s", strerror(errno));
	*bound_port = ntohs(addr.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&addr)->sin6_port
						       : ((struct sockaddr_in *)&addr)->sin_port);
	return fd;
}

/* ---------------------------------------------------------------- options */

static struct options options = {
	.backend = DEFAULT_BACKEND,
	.bind = DEFAULT_BIND,
	.port = DEFAULT_PORT,
	.backlog = DEFAULT_BACKLOG,
	.msgsize = DEFAULT_MSGSIZE,
	.workers = DEFAULT_WORKERS,
	.reads_per_event = DEFAULT_READS_PER_EVENT,
	.accepts_per_event = DEFAULT_ACCEPTS_PER_EVENT,
};

static _Noreturn void list_backends(void)
{
	for (size_t i = 0; ev_backend_at(i); i++)
		puts(ev_backend_at(i));
	puts(URING_RECV_BACKEND);
	exit(0);
}

/* --backend's meaning, with the backends' names: parse_options writes it. */
static char backend_help[128];

/* The options, one a row, in the order --help lists them: each sets one member of options, or acts. */
static const struct option_spec option_specs[] = {
	{ "backend", "NAME", .text = &options.backend, .help = backend_help },
	{ "bind", "ADDR", .text = &options.bind, .help = "numeric IPv4 or IPv6 address to listen on" },
	{ "port", "N", .integer = &options.port, .min = 0, .max = 65535,
	  .help = "TCP port; 0 takes a free one (the listening line says which)" },
	{ "backlog", "N", .integer = &options.backlog, .min = 1, .max = INT_MAX,
	  .help = "listen() backlog (the kernel caps it at net.core.somaxconn)" },
	{ "msgsize", "BYTES", .whole = &options.msgsize, .min = 0, .max = MAX_MSGSIZE,
	  .help = "body size of every 200 response" },
	{ "workers", "N", .integer = &options.workers, .min = 1, .max = MAX_WORKERS,
	  .help = "processes, each with its own loop and SO_REUSEPORT listener" },
	{ "ready-file", "PATH", .text = &options.ready_file,
	  .help = "also write the listening line to PATH, atomically" },
	{ "reads-per-event", "N", .integer = &options.reads_per_event, .min = 1, .max = INT_MAX,
	  .help = "full reads of one connection per event before the others'" },
	{ "accepts-per-event", "N", .integer = &options.accepts_per_event, .min = 1, .max = INT_MAX,
	  .help = "accepts per listener event before the connections' events" },
	{ "dead-holders", "N", .integer = &options.dead_holders, .min = 0, .max = MAX_HOLDERS,
	  .help = "processes holding dead connections in this one's epoll set (holders.c)" },
	{ "dead-port", "N", .integer = &options.dead_port, .min = 0, .max = 65535,
	  .help = "their listener's port, for deadconn; 0 takes a free one" },
	{ "list-backends", NULL, .act = list_backends, .help = "the event backends, one a line, and exit" },
};

static const struct command_line command_line = {
	.usage = "usage: ephttpd [options]\n"
		 "\n"
		 "Answers every HTTP/1.0 and 1.1 GET with 200 and a body of --msgsize bytes\n"
		 "(HEAD with its head alone),\n"
		 "through one event loop per process on the backend chosen.  JSON lines on\n"
		 "stdout: \"listening\" when ready; on SIGTERM or SIGINT one \"stats\" line, then\n"
		 "exit 0; on SIGUSR1 a \"snapshot\" line per worker.\n"
		 "\n"
		 "  option             default     meaning\n",
	.options = option_specs,
	.count = sizeof(option_specs) / sizeof(option_specs[0]),
	.help_meaning = "this text",
	.short_help = true,
	/* The option and its value from the third column, its default from the 22nd, its meaning from the 34th (an
	 * option too long for its column pushes the default right, not the meaning). */
	.layout = { .option_width = 18, .meaning_at = 33 },
	.says = {
		.unknown = "unknown option '%s' (see --help)",
		.missing = "%s needs a value (see --help)",
		.not_within = "--%s: expected an integer in %ld..%ld, got '%s'",
		.unexpected = "unexpected argument '%s' (see --help)",
		.complain = usage_error,
	},
};

/* The options together: the backend known, and --dead-holders with what it needs. */
static void check_options(const struct options *o)
{
	if (o->dead_holders && o->workers > 1)
		usage_error("--dead-holders works with one worker: the holders share that worker's interest set "
			    "(drop --workers or --dead-holders)");
	bool known = strcmp(o->backend, URING_RECV_BACKEND) == 0;
	for (size_t i = 0; !known && ev_backend_at(i); i++)
		known = strcmp(o->backend, ev_backend_at(i)) == 0;
	if (!known)
		usage_error("unknown backend '%s' (choose %s|%s)", o->backend, ev_backend_names(), URING_RECV_BACKEND);
	if (o->dead_holders && strcmp(o->backend, URING_RECV_BACKEND) == 0)
		usage_error("--dead-holders shares an epoll interest set, and io_uring-recv's ring has one issuer "
			    "(use --backend epoll or epoll-et)");
}

static struct options parse_options(int argc, char **argv)
{
	snprintf(backend_help, sizeof(backend_help), "event backend: %s|%s", ev_backend_names(), URING_RECV_BACKEND);
	options_parse(&command_line, argc, argv);
	check_options(&options);
	return options;
}

int main(int argc, char **argv)
{
	struct options o = parse_options(argc, argv);
	int fd_limit = raise_fd_limit("ephttpd", FD_RAISE_OR_KEEP);
	if (!conn_build_responses((size_t)o.msgsize))
		die("out of memory for the responses (lower --msgsize)");

	install_loop_handlers();

	int listeners[MAX_WORKERS];
	int port = o.port;
	for (int i = 0; i < o.workers; i++)
		listeners[i] = open_listener(&o, port, o.workers > 1, &port);

	if (o.workers > 1)
		return run_workers(&o, listeners, port, fd_limit);

	struct worker_stats stats;
	if (!o.dead_holders) {
		int status = serve_worker(&o, listeners[0], fd_limit, 0, port, &stats);
		print_stats(&o, fd_limit, &stats, 1, NULL);
		return status;
	}
	struct server *s = server_create(&o, listeners[0], fd_limit);
	int dead_port = 0;
	int dead_listener = open_listener(&o, o.dead_port, false, &dead_port);
	struct holders *holders = holders_start(&o, server_loop(s), dead_listener, dead_port, fd_limit);
	server_attach_holders(s, holders);
	announce(&o, port, dead_port, fd_limit);
	struct worker_stats *held_stats;
	int status = server_run(s, 0, &held_stats);
	print_stats(&o, fd_limit, held_stats, 1, holders);
	holders_stop(holders);
	server_destroy(s);
	return status;
}
