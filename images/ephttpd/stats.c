/*
 * stats.c - ephttpd's counters: what both loops count the same way, and the
 * JSON lines on stdout that report them: "listening", "snapshot", "stats".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "conn.h"
#include "parts.h"

void count_opened(struct worker_stats *st)
{
	st->accepted++;
	if (++st->open > st->peak_open)
		st->peak_open = st->open;
}

void count_closed(struct worker_stats *st)
{
	st->closed++;
	st->open--;
}

void count_http(struct worker_stats *st, const struct conn_counts *counts)
{
	st->requests += counts->requests;
	st->responses_200 += counts->responses_200;
	st->responses_4xx += counts->responses_4xx;
}

void take_cpu_times(struct worker_stats *st)
{
	struct rusage ru;
	if (getrusage(RUSAGE_SELF, &ru) == 0) {
		st->user_cpu_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
		st->sys_cpu_s = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
	}
}

static int format_counters(char *buf, size_t size, const struct worker_stats *st)
{
	double per_wait = st->wait_calls ? (double)st->events / (double)st->wait_calls : 0.0;
	int n = snprintf(buf, size,
			 "\"accepted\":%" PRIu64 ",\"refused\":%" PRIu64 ",\"closed\":%" PRIu64
			 ",\"open\":%" PRIu64 ",\"requests\":%" PRIu64 ",\"responses_200\":%" PRIu64
			 ",\"responses_4xx\":%" PRIu64 ",\"wait_calls\":%" PRIu64 ",\"events\":%" PRIu64
			 ",\"events_per_wait\":%.3f,\"peak_open\":%" PRIu64 ",\"reads_capped\":%" PRIu64
			 ",\"accepts_capped\":%" PRIu64 ",\"ready_served\":%" PRIu64
			 ",\"user_cpu_s\":%.6f,\"sys_cpu_s\":%.6f",
			 st->accepted, st->refused, st->closed, st->open, st->requests, st->responses_200,
			 st->responses_4xx, st->wait_calls, st->events, per_wait, st->peak_open, st->reads_capped,
			 st->accepts_capped, st->ready_served, st->user_cpu_s, st->sys_cpu_s);
	/* io_uring-recv's own (uring_loop.c); a readiness loop has no such counts. */
	if (st->ring_counters && n > 0 && (size_t)n < size)
		n += snprintf(buf + n, size - (size_t)n,
			      ",\"submissions\":%" PRIu64 ",\"completions\":%" PRIu64 ",\"recv_rearmed\":%" PRIu64,
			      st->submissions, st->completions, st->recv_rearmed);
	return n;
}

/* One write(2), so that the lines of several workers sharing stdout never mix. */
/* The holders' JSON member after a comma, or nothing. */
#define HOLDERS_JSON_MAX (MAX_HOLDERS * 384 + 256)
static const char *holders_member(struct holders *holders, char *buf, size_t size)
{
	if (!holders)
		return "";
	buf[0] = ',';
	if (holders_json(holders, buf + 1, size - 1) < 0)
		snprintf(buf, size, ",\"dead_holders\":null");
	return buf;
}

void print_snapshot(struct worker_stats *st, int worker, struct holders *holders)
{
	static char line[1024 + HOLDERS_JSON_MAX], member[HOLDERS_JSON_MAX];
	char counters[768];
	take_cpu_times(st);
	format_counters(counters, sizeof(counters), st);
	int n = snprintf(line, sizeof(line), "{\"event\":\"snapshot\",\"worker\":%d,\"pid\":%d,%s%s}\n", worker,
			 (int)getpid(), counters, holders_member(holders, member, sizeof(member)));
	if (n > 0 && write(STDOUT_FILENO, line, (size_t)n) < 0) {
		/* stdout gone: nobody is reading snapshots */
	}
}

void print_stats(const struct options *o, int fd_limit, const struct worker_stats *per_worker, int count,
		 struct holders *holders)
{
	static char member[HOLDERS_JSON_MAX];
	struct worker_stats sum = { 0 };
	for (int i = 0; i < count; i++) {
		const struct worker_stats *w = &per_worker[i];
		sum.accepted += w->accepted;
		sum.refused += w->refused;
		sum.closed += w->closed;
		sum.open += w->open;
		sum.peak_open += w->peak_open; /* the workers' peaks need not coincide: an upper bound */
		sum.requests += w->requests;
		sum.responses_200 += w->responses_200;
		sum.responses_4xx += w->responses_4xx;
		sum.wait_calls += w->wait_calls;
		sum.events += w->events;
		sum.reads_capped += w->reads_capped;
		sum.accepts_capped += w->accepts_capped;
		sum.ready_served += w->ready_served;
		sum.submissions += w->submissions;
		sum.completions += w->completions;
		sum.recv_rearmed += w->recv_rearmed;
		sum.ring_counters |= w->ring_counters;
		sum.user_cpu_s += w->user_cpu_s;
		sum.sys_cpu_s += w->sys_cpu_s;
	}
	char counters[768];
	format_counters(counters, sizeof(counters), &sum);
	printf("{\"event\":\"stats\",\"backend\":\"%s\",\"workers\":%d,\"fd_limit\":%d,%s,\"per_worker\":[",
	       o->backend, o->workers, fd_limit, counters);
	for (int i = 0; i < count; i++) {
		format_counters(counters, sizeof(counters), &per_worker[i]);
		printf("%s{\"worker\":%d,\"pid\":%d,%s}", i ? "," : "", i, (int)per_worker[i].pid, counters);
	}
	printf("]%s}\n", holders_member(holders, member, sizeof(member)));
	fflush(stdout);
}

void announce(const struct options *o, int port, int dead_port, int fd_limit)
{
	char line[512], dead[64] = "";
	if (o->dead_holders)
		snprintf(dead, sizeof(dead), ",\"dead_holders\":%d,\"dead_port\":%d", o->dead_holders, dead_port);
	snprintf(line, sizeof(line),
		 "{\"event\":\"listening\",\"bind\":\"%s\",\"port\":%d,\"backend\":\"%s\",\"workers\":%d,"
		 "\"fd_limit\":%d%s}\n",
		 o->bind, port, o->backend, o->workers, fd_limit, dead);
	if (o->ready_file) {
		char tmp[PATH_MAX];
		snprintf(tmp, sizeof(tmp), "%s.%d.tmp", o->ready_file, (int)getpid());
		FILE *f = fopen(tmp, "w");
		if (!f || fputs(line, f) < 0 || fclose(f) != 0 || rename(tmp, o->ready_file) < 0)
			die("--ready-file %s: %s", o->ready_file, strerror(errno));
	}
	fputs(line, stdout);
	fflush(stdout);
}
