/*
 * lag.c - the generator's lateness of lag.h: counts and sums, no samples kept.
 */
#include <stdlib.h>

#include "lag.h"

struct lag {
	int64_t threshold_ns;
	uint64_t checked, late, sum_ns;
	int64_t max_ns;
};

struct lag *lag_create(int64_t threshold_ns)
{
	struct lag *l = calloc(1, sizeof(*l));
	if (l)
		l->threshold_ns = threshold_ns;
	return l;
}

void lag_destroy(struct lag *l)
{
	free(l);
}

void lag_record(struct lag *l, int64_t lag_ns)
{
	l->checked++;
	l->sum_ns += (uint64_t)lag_ns;
	if (lag_ns > l->max_ns)
		l->max_ns = lag_ns;
	if (lag_ns > l->threshold_ns)
		l->late++;
}

uint64_t lag_checked(const struct lag *l)
{
	return l->checked;
}

uint64_t lag_late(const struct lag *l)
{
	return l->late;
}

int64_t lag_max_ns(const struct lag *l)
{
	return l->max_ns;
}

double lag_mean_ns(const struct lag *l)
{
	return l->checked ? (double)l->sum_ns / (double)l->checked : 0.0;
}

double lag_late_share(const struct lag *l)
{
	return l->checked ? (double)l->late / (double)l->checked : 0.0;
}

bool lag_could_move(const struct lag *l, uint64_t one_in)
{
	return l->late > 0 && l->late * one_in >= l->checked;
}
