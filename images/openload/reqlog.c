/*
 * reqlog.c - the latencies of reqlog.h in one array, written out in chunks of
 * records encoded little-endian whatever the host's byte order.
 */
#include <errno.h>
#include <stdlib.h>

#include "reqlog.h"

#define CHUNK_RECORDS 4096

struct reqlog {
	uint64_t count;
	int64_t latency_ns[];
};

struct reqlog *reqlog_create(uint64_t count)
{
	if (count > REQLOG_MAX) {
		errno = E2BIG;
		return NULL;
	}
	struct reqlog *l = malloc(sizeof(*l) + (size_t)count * sizeof(int64_t));
	if (!l) {
		errno = ENOMEM;
		return NULL;
	}
	l->count = count;
	for (uint64_t n = 0; n < count; n++)
		l->latency_ns[n] = REQLOG_NO_REPLY;
	return l;
}

void reqlog_destroy(struct reqlog *l)
{
	free(l);
}

void reqlog_reply(struct reqlog *l, uint64_t n, int64_t latency_ns)
{
	if (n < l->count)
		l->latency_ns[n] = latency_ns;
}

static void put_le64(unsigned char *p, int64_t value)
{
	uint64_t v = (uint64_t)value;
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

int reqlog_write(const struct reqlog *l, FILE *out, uint64_t due, int64_t (*due_at)(uint64_t n))
{
	static unsigned char chunk[CHUNK_RECORDS * REQLOG_RECORD];
	if (due > l->count)
		due = l->count;
	for (uint64_t first = 0; first < due; first += CHUNK_RECORDS) {
		uint64_t end = due - first < CHUNK_RECORDS ? due : first + CHUNK_RECORDS;
		for (uint64_t n = first; n < end; n++) {
			unsigned char *record = chunk + (n - first) * REQLOG_RECORD;
			put_le64(record, due_at(n));
			put_le64(record + 8, l->latency_ns[n]);
		}
		size_t bytes = (size_t)(end - first) * REQLOG_RECORD;
		if (fwrite(chunk, 1, bytes, out) != bytes)
			return -1;
	}
	return fflush(out) == 0 ? 0 : -1;
}
