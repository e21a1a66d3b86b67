/*
 * hist.h - a latency histogram with HdrHistogram's bucket scheme: a fixed
 * relative precision over a fixed range, in a flat array of counts, so that
 * recording a sample costs a count-leading-zeros and an increment.
 *
 * The scheme: a value v (nanoseconds here, but the unit is the caller's)
 * below 2 * HIST_HALF is its own bucket (exact).  Above, v falls in the power
 * of two [2^m, 2^(m+1)) with m >= HIST_SUB_BITS + 1; that range is cut into
 * HIST_HALF equal buckets of width 2^(m - HIST_SUB_BITS), so a bucket's width
 * is at most 1/HIST_HALF (2^-10, under 0.1 %) of the smallest value in it:
 * three significant decimal digits, HdrHistogram's "3 significant figures"
 * (its 2048 sub-buckets, half of them per power of two above the first).
 * Values above HIST_HIGHEST (60 s in ns) are counted in the last bucket and
 * in `saturated`; the exact largest and smallest values are kept apart.
 *
 * A percentile is the nearest rank's bucket, reported as the highest value in
 * that bucket (HdrHistogram's "highest equivalent value"), but never above the
 * exact maximum (and the maximum itself when the rank falls among saturated
 * values): the reported value is at or above the true sample, by less than
 * the bucket's width.
 *
 * Not thread safe; the counts are 64-bit.  The tests drive it through ctypes
 * (tests/test_openload.py) against a sorted list of the same samples.
 */
#ifndef OPENLOAD_HIST_H
#define OPENLOAD_HIST_H

#include <stdint.h>

#define HIST_SUB_BITS 10
#define HIST_HALF     (1u << HIST_SUB_BITS) /* buckets per power of two above the exact range */
#define HIST_HIGHEST  60000000000ull         /* 60 s in ns */

struct hist;

struct hist *hist_create(void);
void hist_destroy(struct hist *h);
void hist_reset(struct hist *h);
void hist_record(struct hist *h, uint64_t value);
/* pct in [0, 100]; 0 when nothing was recorded. */
uint64_t hist_value_at(const struct hist *h, double pct);
uint64_t hist_count(const struct hist *h);
uint64_t hist_min(const struct hist *h);
uint64_t hist_max(const struct hist *h);
uint64_t hist_saturated(const struct hist *h);
double hist_mean(const struct hist *h);
/* The bucket a value falls in: its lowest value and its width (for the tests and the JSON). */
uint64_t hist_bucket_lowest(uint64_t value);
uint64_t hist_bucket_width(uint64_t value);

#endif
