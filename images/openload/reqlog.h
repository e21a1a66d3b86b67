/*
 * reqlog.h - every request's corrected latency, kept for --requests-out: one
 * slot per request of the run, allocated and filled before the schedule
 * starts (every page touched then) and written to the file after it ends, so
 * that the schedule does no I/O and no allocation for it: a reply costs one
 * store.
 *
 * The file: one REQLOG_RECORD-byte record per request due during the run
 * (the JSON's `requests`), in due order (record n is request n of the run,
 * so due times never decrease), each two little-endian int64s:
 *   due_ns      the request's due time, CLOCK_MONOTONIC nanoseconds (the
 *               schedule's own: t0 + n/R to the nearest nanosecond);
 *   latency_ns  its corrected latency, from the due time to the end of its
 *               reply, in nanoseconds (the value the histogram records); or
 *               REQLOG_NO_REPLY (-1) for a request that got no reply: an
 *               error of any kind (connect, write, read, closed, timeout,
 *               parse), unsent or unanswered at the end of the drain.
 * Nothing else: no header, no count (the size over REQLOG_RECORD is the
 * count), no send time or uncorrected latency, no status (a non-2xx reply is
 * a reply here), no connection, no error kind.  Requests never due (a run
 * ended early by a signal) have no record.
 *
 * Not thread safe.  The tests drive it through ctypes (tests/test_tail.py).
 */
#ifndef OPENLOAD_REQLOG_H
#define OPENLOAD_REQLOG_H

#include <stdint.h>
#include <stdio.h>

#define REQLOG_RECORD   16
#define REQLOG_NO_REPLY (-1)
/* The most requests one run can keep: 800 MB of memory during the run, a 1.6 GB file. */
#define REQLOG_MAX      100000000ull

struct reqlog;

/* Slots for count requests, each REQLOG_NO_REPLY; NULL with errno E2BIG when count is above REQLOG_MAX, or
 * ENOMEM. */
struct reqlog *reqlog_create(uint64_t count);
void reqlog_destroy(struct reqlog *l);
/* Request n (below count) got its reply latency_ns after it was due. */
void reqlog_reply(struct reqlog *l, uint64_t n, int64_t latency_ns);
/* Writes the records of requests 0 .. due - 1 (due at most count) to out, request n due at due_at(n) ns;
 * 0, or -1 with errno when a write fails. */
int reqlog_write(const struct reqlog *l, FILE *out, uint64_t due, int64_t (*due_at)(uint64_t n));

#endif
