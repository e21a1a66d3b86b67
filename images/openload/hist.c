/*
 * hist.c - the histogram of hist.h.  Index of a value v: with m the position
 * of v's highest set bit and s = max(0, m - HIST_SUB_BITS), the index is
 * s * HIST_HALF + (v >> s).  For s = 0 that is v itself (0 .. 2*HIST_HALF-1);
 * each s above adds HIST_HALF buckets, whose (v >> s) runs over
 * HIST_HALF .. 2*HIST_HALF-1, so indices are dense and ordered as values are.
 */
#include <stdlib.h>
#include <string.h>

#include "hist.h"

static unsigned shift_of(uint64_t v)
{
	if (v < 2ull * HIST_HALF)
		return 0;
	unsigned top = 63u - (unsigned)__builtin_clzll(v);
	return top - HIST_SUB_BITS;
}

static size_t index_of(uint64_t v)
{
	unsigned s = shift_of(v);
	return (size_t)s * HIST_HALF + (size_t)(v >> s);
}

struct hist {
	uint64_t total, saturated, min, max;
	long double sum;
	uint64_t counts[];
};

static size_t bucket_count(void)
{
	return index_of(HIST_HIGHEST) + 1;
}

struct hist *hist_create(void)
{
	struct hist *h = calloc(1, sizeof(*h) + bucket_count() * sizeof(uint64_t));
	if (h)
		h->min = UINT64_MAX;
	return h;
}

void hist_destroy(struct hist *h)
{
	free(h);
}

void hist_reset(struct hist *h)
{
	memset(h, 0, sizeof(*h) + bucket_count() * sizeof(uint64_t));
	h->min = UINT64_MAX;
}

void hist_record(struct hist *h, uint64_t value)
{
	if (value < h->min)
		h->min = value;
	if (value > h->max)
		h->max = value;
	h->total++;
	h->sum += (long double)value;
	if (value > HIST_HIGHEST) {
		h->saturated++;
		value = HIST_HIGHEST;
	}
	h->counts[index_of(value)]++;
}

uint64_t hist_bucket_lowest(uint64_t value)
{
	unsigned s = shift_of(value);
	return (value >> s) << s;
}

uint64_t hist_bucket_width(uint64_t value)
{
	return 1ull << shift_of(value);
}

/* The lowest value of bucket i: the inverse of index_of. */
static uint64_t lowest_of_index(size_t i)
{
	if (i < 2u * HIST_HALF)
		return i;
	size_t s = i / HIST_HALF - 1;
	uint64_t sub = (uint64_t)(i - s * HIST_HALF);
	return sub << s;
}

uint64_t hist_value_at(const struct hist *h, double pct)
{
	if (h->total == 0)
		return 0;
	if (pct < 0)
		pct = 0;
	if (pct > 100)
		pct = 100;
	/* The nearest rank: the smallest sample with at least pct % of the samples at or below it.  A
	 * percentile such as 99.9 is not exact in binary: the relative slack keeps 99.9 % of 5000 at 4995. */
	double exact = pct / 100.0 * (double)h->total * (1.0 - 1e-12);
	uint64_t rank = (uint64_t)exact;
	if ((double)rank < exact)
		rank++;
	if (rank < 1)
		rank = 1;
	if (rank > h->total)
		rank = h->total;
	uint64_t seen = 0;
	size_t n = bucket_count();
	for (size_t i = 0; i < n; i++) {
		seen += h->counts[i];
		if (seen >= rank) {
			if (i == n - 1 && h->saturated)
				return h->max; /* the saturated bucket: its values are known only to be at most max */
			uint64_t low = lowest_of_index(i);
			uint64_t highest = low + hist_bucket_width(low) - 1;
			if (highest > h->max)
				highest = h->max;
			return highest;
		}
	}
	return h->max;
}

uint64_t hist_count(const struct hist *h)
{
	return h->total;
}

uint64_t hist_min(const struct hist *h)
{
	return h->total ? h->min : 0;
}

uint64_t hist_max(const struct hist *h)
{
	return h->max;
}

uint64_t hist_saturated(const struct hist *h)
{
	return h->saturated;
}

double hist_mean(const struct hist *h)
{
	return h->total ? (double)(h->sum / (long double)h->total) : 0.0;
}
