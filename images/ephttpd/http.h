/*
 * http.h - the request-head parser of ephttpd: just enough HTTP/1.0 and 1.1 to
 * answer GET and HEAD, and to tell a malformed request from one still arriving.
 */
#ifndef HTTP_H
#define HTTP_H

#include <stdbool.h>
#include <stddef.h>

/* A request head (request line, headers, blank line) longer than this gets 431. */
#define HTTP_HEAD_MAX 8192

enum http_verdict {
	HTTP_INCOMPLETE,     /* no blank line yet, and what there is may still become a request */
	HTTP_GET,            /* a complete GET head */
	HTTP_HEAD,           /* a complete HEAD head: answered as GET, without the body */
	HTTP_BAD_REQUEST,    /* 400: malformed request line or header, or a GET or HEAD with a body */
	HTTP_BAD_METHOD,     /* 405: a well-formed request for another method */
	HTTP_HEAD_TOO_LARGE, /* 431: no blank line within HTTP_HEAD_MAX bytes */
};

struct http_request {
	size_t head_len; /* bytes of buf the request takes: an ignored empty line, the head, its blank line */
	bool keep_alive; /* HTTP/1.1 unless "Connection: close"; 1.0 only with "keep-alive" */
};

/*
 * Parses the request head at the start of buf[0..len).  req is filled for
 * HTTP_GET, HTTP_HEAD and HTTP_BAD_METHOD.  One empty line before the request
 * line is ignored (RFC 9112 section 2.2: a client may send a CRLF after a
 * request).  A request line that cannot become valid is rejected as soon as
 * its first bad byte arrives, without waiting for the rest.
 */
enum http_verdict http_parse(const char *buf, size_t len, struct http_request *req);

#endif
