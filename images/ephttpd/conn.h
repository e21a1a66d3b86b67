/*
 * conn.h - one HTTP connection of ephttpd as a state machine that makes no
 * system call.  Bytes read go in (conn_input); the responses they ask for are
 * queued as runs of prebuilt responses and come out as iovecs (conn_output);
 * what the socket took is reported back (conn_sent).  The event loops
 * (server.c, uring_loop.c) do the reading, writing and closing that the
 * state asks for.
 *
 * A request that ends the connection (Connection: close, HTTP/1.0 without
 * keep-alive, an error) is the last one parsed: whatever follows it is never
 * read as a request, and the loop closes the connection once that response
 * is sent.
 */
#ifndef CONN_H
#define CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

enum response {
	RESPONSE_OK,         /* 200, keep-alive */
	RESPONSE_OK_CLOSE,   /* 200, then the connection ends */
	RESPONSE_HEAD,       /* 200's head alone, keep-alive */
	RESPONSE_HEAD_CLOSE, /* 200's head alone, then the connection ends */
	RESPONSE_400,
	RESPONSE_405,
	RESPONSE_431,
	RESPONSE_COUNT
};

struct conn_counts {
	uint64_t requests, responses_200, responses_4xx;
};

/* A run of equal responses in the output queue. */
struct conn_run {
	uint8_t response;
	uint32_t count;
};

/* Runs kept in the connection itself; a pipeline alternating more kinds than
 * this (GET, HEAD, GET, ...) grows the queue on the heap. */
#define CONN_INLINE_RUNS 2

struct conn {
	char *stash;          /* an unfinished request head kept between reads */
	uint32_t stash_len, stash_cap;
	struct conn_run inline_runs[CONN_INLINE_RUNS];
	struct conn_run *runs; /* inline_runs, or a larger heap array */
	uint32_t run_count, run_cap;
	size_t sent;   /* bytes of the first queued response already written */
	bool closing;  /* a response that ends the connection is queued: no more requests */
	bool ended;    /* ... and it has been sent */
};

/* Builds the responses once per process: 200 with a body of msgsize bytes.
 * Returns false when out of memory. */
bool conn_build_responses(size_t msgsize);

void conn_init(struct conn *c);
void conn_free(struct conn *c);

/* Copies the unfinished head kept from the last read to buf (which has room
 * for HTTP_HEAD_MAX bytes) and returns its length: the next read goes after it. */
size_t conn_copy_stash(const struct conn *c, char *buf);
/* Queues a response for every complete request in buf[0..len) (the stash and
 * what was just read) and keeps the unfinished rest.  Returns false when out
 * of memory. */
bool conn_input(struct conn *c, const char *buf, size_t len, struct conn_counts *counts);

/* The queued output as at most max iovecs; *total is their byte count.
 * Returns the number of iovecs, 0 when nothing is queued. */
int conn_output(const struct conn *c, struct iovec *iov, int max, size_t *total);
/* The socket took n bytes of conn_output's iovecs. */
void conn_sent(struct conn *c, size_t n, struct conn_counts *counts);

static inline bool conn_pending(const struct conn *c)
{
	return c->run_count > 0;
}

#endif
