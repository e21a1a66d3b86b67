/*
 * pipetest.c - token passing over mostly idle pipes, after the pipetest of
 * the 2002 epoll scalability study.
 *
 * What is measured: how fast an event-notification mechanism delivers
 * readiness when only a few of the descriptors it watches are ever ready.
 *
 * The model: N non-blocking pipes, the read end of every one registered with
 * the backend for EV_READ, in pipe order.  M tokens (one byte each) circulate
 * through them.  The loop waits for readiness; each delivery of a token is a
 * pass: the token is read and written into its next pipe (--walk below),
 * until it has made G passes (after its last pass it is read and not written
 * again).  Where the tokens go is the walk:
 *
 *   stay (default)  every token stays on one pipe, the last of its share of
 *       the pipes: token t on pipe (t+1)*N/M - 1, so one token sits on the last
 *       pipe.  The place matters to poll and select: they register a wait on
 *       every descriptor they scan before the first ready one, so a token at
 *       the front of the set would hide most of their cost.  The other N-M
 *       pipes stay idle all along, so any cost that grows with N is the
 *       mechanism's cost of watching idle descriptors, with a working set
 *       that does not grow with N.
 *   stride  the token walk of the 2002 pipetest (LaHaise's pipetest.c, as
 *       its 2006 revision still carries it, there disabled under #if 0): after
 *       g passes token t is on pipe (g*17 + t + t*(N/M)) mod N, so it moves
 *       17 pipes on at every pass and over N passes touches every pipe - when
 *       17 does not divide N.  17 is prime, so when it divides N a token
 *       visits only N/17 pipes (those congruent to its start modulo 17), and
 *       the other pipes are never touched.  Tokens move at their own pace, so
 *       two may meet on one pipe: one read then carries both, and each makes
 *       its pass (a pipe's bytes are its tokens, the loop keeps a list of them
 *       per pipe).  The working set grows with N: this is what the walk
 *       measures beyond stay, the cost of readiness on descriptors whose
 *       kernel and user state are not in the caches.
 *
 * With either walk, poll and select hand the kernel all N each wait, epoll
 * keeps them in the kernel and reports only the ready ones, io_uring keeps a
 * multishot poll per descriptor in the kernel, and AIO poll re-arms one-shot
 * polls on just the descriptors that fired.
 *
 * The metric: token passes per second over the passing loop (CLOCK_MONOTONIC),
 * plus the number of waits and the events each returned on average.  The loop
 * ends when every token has made G passes or, with --max-seconds, when time is
 * up: a sweep bounds the slow mechanisms' runs in time, not in passes.
 *
 * NOT measured: creating and registering the pipes, a first wait that makes
 * the backend hand every registration to the kernel, and placing the tokens
 * (all reported apart as setup_s); network stacks, sockets or more than one
 * thread; the pipes never fill, so nothing here blocks on writing.
 *
 * The visits: how many passes each pipe carried.  The JSON gives pipes_visited
 * (pipes that carried at least one) and the least and most passes of one
 * pipe; --visits PATH writes every pipe's count, one line per pipe in pipe
 * order, for a test to read.
 *
 * Output: one JSON object on stdout.  Exit 2 on bad usage, including more
 * pipes than the descriptor limit allows and an unknown or unavailable backend.
 */
#define _GNU_SOURCE /* pipe2 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ev.h"
#include "fdlimit.h"
#include "options.h"

#define DEFAULT_BACKEND     "epoll"
#define DEFAULT_PIPES       1000
#define DEFAULT_TOKENS      1
#define DEFAULT_GENERATIONS 500000
#define DEFAULT_MAX_SECONDS 0 /* no limit */
/* Waits between looks at the clock for --max-seconds. */
#define CLOCK_CHECK_WAITS 256

/* Descriptors besides the pipes: stdio, the backend's own, and slack. */
#define RESERVED_FDS 16
/* A wait this long with tokens in flight means an event was lost. */
#define STALL_TIMEOUT_MS 10000
/* The stride of the 2002 walk: pipes a token moves on at every pass. */
#define WALK_STRIDE 17
/* Bytes of one read of a pipe (a read asks for one more than its tokens, to see that it is drained). */
#define READ_CHUNK 4096

static const char *backend = DEFAULT_BACKEND;
static long pipes = DEFAULT_PIPES;
static long tokens = DEFAULT_TOKENS;
static long generations = DEFAULT_GENERATIONS;
static long max_seconds = DEFAULT_MAX_SECONDS;
static const char *walk = "stay";
static const char *visits_path = "";
static int striding; /* --walk stride */

static _Noreturn __attribute__((format(printf, 1, 2))) void usage_error(const char *fmt, ...)
{
	va_list args;
	va_start(args, fmt);
	fprintf(stderr, "pipetest: ");
	vfprintf(stderr, fmt, args);
	fprintf(stderr, " (see pipetest --help)\n");
	va_end(args);
	exit(2);
}

/* The options, one a row, in the order --help lists them: each sets one of the variables above. */
static const struct option_spec option_specs[] = {
	{ "backend", "NAME", .text = &backend, .help = "select|poll|epoll|epoll-et|io_uring|aio-poll" },
	{ "pipes", "N", .whole = &pipes, .min = 1, .max = INT32_MAX,
	  .help = "pipes watched (with stay all but the tokens' idle)" },
	{ "tokens", "M", .whole = &tokens, .min = 1, .max = INT32_MAX, .help = "tokens circulating (M <= N)" },
	{ "generations", "G", .whole = &generations, .min = 1, .max = INT32_MAX, .help = "passes each token makes" },
	{ "max-seconds", "S", .whole = &max_seconds, .min = 1, .max = INT32_MAX,
	  .help = "stop passing after S seconds (0: when G is reached)" },
	{ "walk", "stay|stride", .text = &walk, .help = "stay: tokens keep their pipes; stride: 2002's walk" },
	{ "visits", "PATH", .text = &visits_path, .help = "write each pipe's passes there, one a line" },
};

static const struct command_line command_line = {
	.usage = "usage: pipetest [options]\n"
		 "Passes tokens through N pipes watched by one event backend; prints one JSON object.\n\n",
	.options = option_specs,
	.count = sizeof(option_specs) / sizeof(option_specs[0]),
	.help_meaning = "show this and exit",
	.layout = { .option_width = 19, .meaning_width = 50 },
	.says = {
		.unknown = "unknown option or missing value in '%s'",
		.missing = "unknown option or missing value in '%s'",
		.not_within = "--%s needs a whole number from %ld to %ld, not '%s'",
		.unexpected = "unexpected argument '%s'",
		.complain = usage_error,
	},
};

static void parse_args(int argc, char **argv)
{
	options_parse(&command_line, argc, argv);
	if (tokens > pipes)
		usage_error("%ld tokens need as many pipes: use --tokens %ld or fewer", tokens, pipes);
	if (strcmp(walk, "stay") != 0 && strcmp(walk, "stride") != 0)
		usage_error("unknown walk '%s' (choose stay|stride)", walk);
	striding = strcmp(walk, "stride") == 0;
}

/* The pipe token t is on after g passes (the top of this file). */
static long pipe_of_token(long t, long g)
{
	if (!striding)
		return (long)((int64_t)(t + 1) * pipes / tokens) - 1;
	return (long)(((int64_t)g * WALK_STRIDE + t + (int64_t)t * (pipes / tokens)) % pipes);
}

static double seconds_since(const struct timespec *start)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - start->tv_sec) + (double)(now.tv_nsec - start->tv_nsec) / 1e9;
}

static _Noreturn __attribute__((format(printf, 2, 3))) void fail(int status, const char *fmt, ...)
{
	va_list args;
	va_start(args, fmt);
	fprintf(stderr, "pipetest: ");
	vfprintf(stderr, fmt, args);
	fprintf(stderr, "\n");
	va_end(args);
	exit(status);
}

/* ---- the run's state ---------------------------------------------------------------------------------- */

static struct {
	struct ev_loop *loop;
	long fd_limit;
	int (*pipe_fds)[2];
	long *pipe_of_fd;
	/* The tokens on each pipe, as a list through next_token; a token's passes so far. */
	long *first_token;
	long *tokens_on;
	long *next_token;
	long *passes_made;
	uint64_t *visits;          /* passes each pipe carried */
	struct ev_event *events;   /* room for one wait's events: a pipe per token at most */
	uint64_t passes, wait_calls, events_seen;
	const char *stopped_by;
	double setup_s, elapsed_s;
} run;

/* ---- setup (not timed as passes: setup_s) ------------------------------------------------------------- */

/* Exits 2 when the pipes need more descriptors than the limit allows. */
static void check_fd_limit(void)
{
	long max_pipes = (run.fd_limit - RESERVED_FDS) / 2;
	if (pipes > max_pipes)
		fail(2, "%ld pipes need %ld descriptors; this host allows %ld per process: use --pipes %ld or fewer",
		     pipes, 2 * pipes + RESERVED_FDS, run.fd_limit, max_pipes);
}

static void allocate(void)
{
	run.pipe_fds = calloc((size_t)pipes, sizeof(*run.pipe_fds));
	run.pipe_of_fd = calloc((size_t)run.fd_limit, sizeof(*run.pipe_of_fd));
	run.first_token = malloc((size_t)pipes * sizeof(*run.first_token));
	run.tokens_on = calloc((size_t)pipes, sizeof(*run.tokens_on));
	run.visits = calloc((size_t)pipes, sizeof(*run.visits));
	run.next_token = calloc((size_t)tokens, sizeof(*run.next_token));
	run.passes_made = calloc((size_t)tokens, sizeof(*run.passes_made));
	run.events = calloc((size_t)tokens, sizeof(*run.events));
	if (!run.pipe_fds || !run.pipe_of_fd || !run.first_token || !run.tokens_on || !run.visits ||
	    !run.next_token || !run.passes_made || !run.events)
		fail(1, "out of memory for %ld pipes", pipes);
}

/* Every pipe, its read end registered for EV_READ, in pipe order. */
static void open_pipes(void)
{
	for (long i = 0; i < pipes; i++) {
		if (pipe2(run.pipe_fds[i], O_NONBLOCK | O_CLOEXEC) < 0)
			fail(1, "pipe %ld of %ld: %s", i + 1, pipes, strerror(errno));
		int read_fd = run.pipe_fds[i][0];
		int ret = ev_add(run.loop, read_fd, EV_READ);
		if (ret == -ERANGE)
			fail(2, "%s cannot watch descriptor %d: use --pipes %ld or fewer with it", ev_name(run.loop),
			     read_fd, i);
		if (ret < 0)
			fail(1, "registering pipe %ld with %s: %s", i + 1, ev_name(run.loop), strerror(-ret));
		run.pipe_of_fd[read_fd] = i;
		run.first_token[i] = -1;
	}
}

/* Backends that hand registrations to the kernel lazily (io_uring and aio-poll arm their polls at the next
 * wait) do so here, untimed. */
static void hand_registrations_to_kernel(void)
{
	int idle = ev_wait(run.loop, run.events, (int)tokens, 0);
	if (idle != 0)
		fail(1, "%s: first wait, before any token: %s", ev_name(run.loop),
		     idle < 0 ? strerror(-idle) : "reported an idle pipe ready");
}

/* Puts token t on pipe p: on its list, and its byte in the pipe. */
static void put_token(long t, long p)
{
	run.next_token[t] = run.first_token[p];
	run.first_token[p] = t;
	run.tokens_on[p]++;
}

static void place_tokens(void)
{
	for (long t = 0; t < tokens; t++) {
		long p = pipe_of_token(t, 0);
		put_token(t, p);
		if (write(run.pipe_fds[p][1], "t", 1) != 1)
			fail(1, "placing token %ld: %s", t + 1, strerror(errno));
	}
}

static void setup(void)
{
	run.fd_limit = raise_fd_limit("pipetest", FD_RAISE_OR_EXIT);
	check_fd_limit();
	char err[256];
	run.loop = ev_create(backend, (int)run.fd_limit, err, sizeof(err));
	if (!run.loop)
		fail(2, "%s", err);

	struct timespec setup_start;
	clock_gettime(CLOCK_MONOTONIC, &setup_start);
	allocate();
	open_pipes();
	hand_registrations_to_kernel();
	place_tokens();
	run.setup_s = seconds_since(&setup_start);
}

/* ---- the walk ----------------------------------------------------------------------------------------- */

/*
 * Reads the tokens of a pipe reported ready: a pipe's bytes are its tokens.  Each read asks for one byte more
 * than is left, so that a read that gets them all is short: the pipe is drained (edge triggering needs that)
 * and holds nothing else.  Returns false for a pipe whose tokens were taken earlier in this batch (nothing to
 * read); exits 1 when the pipe did not hold its tokens' bytes exactly.
 */
static bool take_tokens(const struct ev_event *e, long p)
{
	long on = run.tokens_on[p];
	long got = 0;
	ssize_t r;
	char buf[READ_CHUNK];
	for (;;) {
		size_t ask = (size_t)(on - got) + 1 < sizeof(buf) ? (size_t)(on - got) + 1 : sizeof(buf);
		r = read(e->fd, buf, ask);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += r;
		if ((size_t)r < ask || got > on)
			break;
	}
	int read_errno = r < 0 ? errno : 0;
	if (on == 0 && got == 0 && read_errno == EAGAIN)
		return false;
	if (got != on || r == 0 || (read_errno && read_errno != EAGAIN) || (e->events & EV_ERROR))
		fail(1, "pipe %ld: expected its %ld token byte(s), got %s", p + 1, on,
		     (e->events & EV_ERROR)                 ? "an error or hang-up"
		     : r == 0                               ? "end of file"
		     : read_errno && read_errno != EAGAIN ? strerror(read_errno)
							  : "another number");
	return true;
}

/* Each token taken from pipe p makes its pass: on to its next pipe, unless that was its last. */
static void pass_tokens(long p)
{
	long t = run.first_token[p];
	run.first_token[p] = -1;
	run.visits[p] += (uint64_t)run.tokens_on[p];
	run.tokens_on[p] = 0;
	while (t >= 0) {
		long next = run.next_token[t];
		run.passes++;
		if (++run.passes_made[t] < generations) {
			long q = pipe_of_token(t, run.passes_made[t]);
			if (write(run.pipe_fds[q][1], "t", 1) != 1)
				fail(1, "passing token %ld to pipe %ld: %s", t + 1, q + 1, strerror(errno));
			put_token(t, q);
		}
		t = next;
	}
}

/* One wait and its events; false when --max-seconds is up. */
static bool wait_and_pass(uint64_t total_passes, const struct timespec *start)
{
	if (max_seconds && run.wait_calls % CLOCK_CHECK_WAITS == 0 && seconds_since(start) >= (double)max_seconds)
		return false;
	int n = ev_wait(run.loop, run.events, (int)tokens, STALL_TIMEOUT_MS);
	if (n == -EINTR)
		return true;
	if (n < 0)
		fail(1, "waiting with %s: %s", ev_name(run.loop), strerror(-n));
	if (n == 0)
		fail(1, "no token moved for %d s with %s after %" PRIu64 " of %" PRIu64
			" passes: the backend lost a readiness event",
		     STALL_TIMEOUT_MS / 1000, ev_name(run.loop), run.passes, total_passes);
	run.wait_calls++;
	run.events_seen += (uint64_t)n;
	for (int i = 0; i < n; i++) {
		long p = run.pipe_of_fd[run.events[i].fd];
		if (take_tokens(&run.events[i], p))
			pass_tokens(p);
	}
	return true;
}

/* The passing loop, timed: until every token made its G passes, or --max-seconds. */
static void walk_tokens(void)
{
	uint64_t total_passes = (uint64_t)tokens * (uint64_t)generations;
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	run.stopped_by = "generations";
	while (run.passes < total_passes) {
		if (!wait_and_pass(total_passes, &start)) {
			run.stopped_by = "max-seconds";
			break;
		}
	}
	run.elapsed_s = seconds_since(&start);
}

/* ---- the report --------------------------------------------------------------------------------------- */

/* --visits PATH: every pipe's passes, one a line, in pipe order. */
static void write_visits(void)
{
	FILE *out = fopen(visits_path, "w");
	for (long p = 0; out && p < pipes; p++)
		fprintf(out, "%" PRIu64 "\n", run.visits[p]);
	if (!out || fclose(out) != 0)
		fail(1, "--visits %s: %s", visits_path, strerror(errno));
}

static void report(void)
{
	long pipes_visited = 0;
	uint64_t visits_min = UINT64_MAX, visits_max = 0;
	for (long p = 0; p < pipes; p++) {
		pipes_visited += run.visits[p] > 0;
		visits_min = run.visits[p] < visits_min ? run.visits[p] : visits_min;
		visits_max = run.visits[p] > visits_max ? run.visits[p] : visits_max;
	}
	if (*visits_path)
		write_visits();
	double events_per_wait = run.wait_calls ? (double)run.events_seen / (double)run.wait_calls : 0.0;
	printf("{\"backend\": \"%s\", \"walk\": \"%s\", \"pipes\": %ld, \"tokens\": %ld, \"generations\": %ld, "
	       "\"passes\": %" PRIu64 ", \"elapsed_s\": %.6f, \"passes_per_s\": %.1f, \"setup_s\": %.6f, "
	       "\"fd_limit\": %ld, \"wait_calls\": %" PRIu64 ", \"events_per_wait\": %.3f, "
	       "\"max_seconds\": %ld, \"stopped_by\": \"%s\", \"pipes_visited\": %ld, "
	       "\"visits_min\": %" PRIu64 ", \"visits_max\": %" PRIu64 "}\n",
	       ev_name(run.loop), walk, pipes, tokens, generations, run.passes, run.elapsed_s,
	       (double)run.passes / run.elapsed_s, run.setup_s, run.fd_limit, run.wait_calls, events_per_wait,
	       max_seconds, run.stopped_by, pipes_visited, visits_min, visits_max);
}

int main(int argc, char **argv)
{
	parse_args(argc, argv);
	setup();
	walk_tokens();
	report();
	ev_destroy(run.loop);
	return 0;
}
