/* conn.c - the HTTP state machine of a connection (conn.h): no system calls. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "http.h"

/* First allocation for an unfinished request head kept between reads. */
#define STASH_MIN 256

struct prebuilt {
	char *bytes;
	size_t len;
	int status;
	bool closes;
};

static struct prebuilt responses[RESPONSE_COUNT];

static bool build(enum response which, int status, const char *reason, const char *extra_headers,
		  const char *body, size_t body_len, bool keep_alive, bool head_only)
{
	char head[256];
	int head_len = snprintf(head, sizeof(head),
				"HTTP/1.1 %d %s\r\nServer: ephttpd\r\nContent-Type: text/plain\r\n%s"
				"Content-Length: %zu\r\nConnection: %s\r\n\r\n",
				status, reason, extra_headers, body_len, keep_alive ? "keep-alive" : "close");
	struct prebuilt *r = &responses[which];
	r->len = (size_t)head_len + (head_only ? 0 : body_len);
	r->bytes = malloc(r->len);
	if (!r->bytes)
		return false;
	memcpy(r->bytes, head, (size_t)head_len);
	if (!head_only) {
		if (body)
			memcpy(r->bytes + head_len, body, body_len);
		else
			memset(r->bytes + head_len, 'x', body_len);
	}
	r->status = status;
	r->closes = !keep_alive;
	return true;
}

bool conn_build_responses(size_t msgsize)
{
	static const char bad_request[] = "malformed request\n";
	static const char bad_method[] = "only GET and HEAD are served\n";
	static const char too_large[] = "request head over 8 KiB\n";
	return build(RESPONSE_OK, 200, "OK", "", NULL, msgsize, true, false) &&
	       build(RESPONSE_OK_CLOSE, 200, "OK", "", NULL, msgsize, false, false) &&
	       build(RESPONSE_HEAD, 200, "OK", "", NULL, msgsize, true, true) &&
	       build(RESPONSE_HEAD_CLOSE, 200, "OK", "", NULL, msgsize, false, true) &&
	       build(RESPONSE_400, 400, "Bad Request", "", bad_request, sizeof(bad_request) - 1, false, false) &&
	       build(RESPONSE_405, 405, "Method Not Allowed", "Allow: GET, HEAD\r\n", bad_method,
		     sizeof(bad_method) - 1, false, false) &&
	       build(RESPONSE_431, 431, "Request Header Fields Too Large", "", too_large, sizeof(too_large) - 1,
		     false, false);
}

void conn_init(struct conn *c)
{
	*c = (struct conn){ .runs = c->inline_runs, .run_cap = CONN_INLINE_RUNS };
}

void conn_free(struct conn *c)
{
	free(c->stash);
	if (c->runs != c->inline_runs)
		free(c->runs);
	conn_init(c);
}

size_t conn_copy_stash(const struct conn *c, char *buf)
{
	if (c->stash_len)
		memcpy(buf, c->stash, c->stash_len);
	return c->stash_len;
}

static bool keep_unfinished(struct conn *c, const char *bytes, size_t n)
{
	c->stash_len = 0;
	if (n == 0)
		return true; /* no memcpy from or to a stash never allocated */
	if (n > c->stash_cap) {
		size_t cap = c->stash_cap ? c->stash_cap : STASH_MIN;
		while (cap < n)
			cap *= 2;
		char *grown = realloc(c->stash, cap);
		if (!grown)
			return false;
		c->stash = grown;
		c->stash_cap = (uint32_t)cap;
	}
	memcpy(c->stash, bytes, n);
	c->stash_len = (uint32_t)n;
	return true;
}

static bool queue(struct conn *c, enum response which)
{
	if (c->run_count > 0 && c->runs[c->run_count - 1].response == which) {
		c->runs[c->run_count - 1].count++;
		return true;
	}
	if (c->run_count == c->run_cap) {
		uint32_t cap = c->run_cap * 2;
		struct conn_run *grown = malloc(cap * sizeof(*grown));
		if (!grown)
			return false;
		memcpy(grown, c->runs, c->run_count * sizeof(*grown));
		if (c->runs != c->inline_runs)
			free(c->runs);
		c->runs = grown;
		c->run_cap = cap;
	}
	c->runs[c->run_count++] = (struct conn_run){ .response = (uint8_t)which, .count = 1 };
	return true;
}

static enum response response_to(enum http_verdict verdict, const struct http_request *req)
{
	switch (verdict) {
	case HTTP_GET:
		return req->keep_alive ? RESPONSE_OK : RESPONSE_OK_CLOSE;
	case HTTP_HEAD:
		return req->keep_alive ? RESPONSE_HEAD : RESPONSE_HEAD_CLOSE;
	case HTTP_BAD_METHOD:
		return RESPONSE_405;
	case HTTP_HEAD_TOO_LARGE:
		return RESPONSE_431;
	default:
		return RESPONSE_400;
	}
}

bool conn_input(struct conn *c, const char *buf, size_t len, struct conn_counts *counts)
{
	size_t used = 0;
	while (used < len && !c->closing) {
		struct http_request req;
		enum http_verdict verdict = http_parse(buf + used, len - used, &req);
		if (verdict == HTTP_INCOMPLETE)
			break;
		counts->requests++;
		enum response which = response_to(verdict, &req);
		if (!queue(c, which))
			return false;
		if (responses[which].closes) {
			c->closing = true; /* nothing after it is read as a request */
			c->stash_len = 0;
			return true;
		}
		used += req.head_len;
	}
	return c->closing || keep_unfinished(c, buf + used, len - used);
}

int conn_output(const struct conn *c, struct iovec *iov, int max, size_t *total)
{
	int count = 0;
	size_t skip = c->sent;
	*total = 0;
	for (uint32_t r = 0; r < c->run_count && count < max; r++) {
		const struct prebuilt *p = &responses[c->runs[r].response];
		for (uint32_t k = 0; k < c->runs[r].count && count < max; k++) {
			iov[count++] = (struct iovec){ p->bytes + skip, p->len - skip };
			*total += p->len - skip;
			skip = 0;
		}
	}
	return count;
}

void conn_sent(struct conn *c, size_t n, struct conn_counts *counts)
{
	while (n > 0 && c->run_count > 0) {
		struct conn_run *run = &c->runs[0];
		const struct prebuilt *p = &responses[run->response];
		size_t left = p->len - c->sent;
		if (n < left) {
			c->sent += n;
			return;
		}
		n -= left;
		c->sent = 0;
		if (p->status == 200)
			counts->responses_200++;
		else
			counts->responses_4xx++;
		if (p->closes)
			c->ended = true;
		if (--run->count == 0) {
			c->run_count--;
			memmove(c->runs, c->runs + 1, c->run_count * sizeof(*c->runs));
		}
	}
}
