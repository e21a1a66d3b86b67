/*
 * lag.h - the generator's own lateness, and which latency percentiles it
 * could have moved.
 *
 * Every request is checked once, when the loop first finds it due: its lag is
 * how long after its due time that was.  A lag above the threshold makes it a
 * late send, whatever its connection's state: the loop was not running
 * (descheduled, stopped) or was busy elsewhere, and read no replies either,
 * so a request waiting behind its connection may have waited for the
 * generator too.  A request found due on time is never late, however long it
 * then waits behind a busy connection: that wait is the server's.  The late
 * sends are so an upper bound of the requests the generator delayed, and a
 * percentile it could not have moved is never put down to it.
 *
 * The p-th percentile of the latencies moves only when at least (1 - p) of
 * them change: lag_could_move says whether the late sends were at least one
 * in one_in of the requests checked (100 for p99, 1000 for p99.9), in whole
 * numbers, so the comparison is exact.
 *
 * Not thread safe.  The tests drive it through ctypes (tests/test_openload.py).
 */
#ifndef OPENLOAD_LAG_H
#define OPENLOAD_LAG_H

#include <stdbool.h>
#include <stdint.h>

struct lag;

/* NULL when out of memory.  threshold_ns: a lag above it is a late send. */
struct lag *lag_create(int64_t threshold_ns);
void lag_destroy(struct lag *l);
/* One request found due lag_ns after its due time (0 or more). */
void lag_record(struct lag *l, int64_t lag_ns);

uint64_t lag_checked(const struct lag *l);
uint64_t lag_late(const struct lag *l);
int64_t lag_max_ns(const struct lag *l);
/* 0 when nothing was checked. */
double lag_mean_ns(const struct lag *l);
double lag_late_share(const struct lag *l);
/* Whether at least one send was late and the late ones were at least one in one_in of those checked. */
bool lag_could_move(const struct lag *l, uint64_t one_in);

#endif
