/*
 * http.c - the request-head parser of ephttpd (RFC 9112 syntax, lenient only
 * where the RFC asks a server to be: a bare LF may end a line, and one empty
 * line before the request line is ignored, RFC 9112 section 2.2).  It looks at
 * the request line, the Connection header and whether a body follows; header
 * values are otherwise not checked, and Host is not required.
 */
#include <string.h>
#include <strings.h>

#include "http.h"

/* tchar of RFC 9110: what methods and header names are made of. */
static bool is_token_char(unsigned char c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return true;
	switch (c) {
	case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
	case '-': case '.': case '^': case '_': case '`': case '|': case '~':
		return true;
	default:
		return false;
	}
}

/* A request target is visible ASCII: no space, no control byte, nothing >= 0x80. */
static bool is_target_char(unsigned char c)
{
	return c > ' ' && c < 0x7f;
}

/*
 * "HTTP/1.0" or "HTTP/1.1".  An incomplete line may stop anywhere in it, or
 * just after it with the CR of the CRLF.  Returns the minor version, -1 when
 * the line cannot be valid, 0 when it may still become so.
 */
static int check_version(const char *v, size_t n, bool complete)
{
	static const char prefix[] = "HTTP/1.";
	const size_t prefix_len = sizeof(prefix) - 1;
	if (complete) {
		if (n != prefix_len + 1 || memcmp(v, prefix, prefix_len) != 0)
			return -1;
		return v[prefix_len] == '0' ? 0 : v[prefix_len] == '1' ? 1 : -1;
	}
	if (memcmp(v, prefix, n < prefix_len ? n : prefix_len) != 0)
		return -1;
	if (n > prefix_len && v[prefix_len] != '0' && v[prefix_len] != '1')
		return -1;
	if (n > prefix_len + 1 && (v[prefix_len + 1] != '\r' || n > prefix_len + 2))
		return -1;
	return 0;
}

/*
 * METHOD SP TARGET SP VERSION, without the line end when complete.  Returns
 * the minor HTTP version (complete) or 0 (a valid beginning), -1 if malformed.
 */
static int check_request_line(const char *line, size_t n, bool complete, enum http_verdict *method)
{
	size_t i = 0;
	while (i < n && is_token_char((unsigned char)line[i]))
		i++;
	*method = i == 3 && memcmp(line, "GET", 3) == 0	  ? HTTP_GET
		  : i == 4 && memcmp(line, "HEAD", 4) == 0 ? HTTP_HEAD
							   : HTTP_BAD_METHOD;
	if (i == n)
		return complete ? -1 : 0;
	if (i == 0 || line[i] != ' ')
		return -1;
	size_t target = ++i;
	while (i < n && is_target_char((unsigned char)line[i]))
		i++;
	if (i == n)
		return complete ? -1 : 0;
	if (i == target || line[i] != ' ')
		return -1;
	i++;
	return check_version(line + i, n - i, complete);
}

static bool name_is(const char *name, size_t len, const char *wanted)
{
	return len == strlen(wanted) && strncasecmp(name, wanted, len) == 0;
}

/* Connection: a comma-separated list of options; close wins over keep-alive. */
static void read_connection_options(const char *v, size_t n, bool *close, bool *keep_alive)
{
	size_t i = 0;
	while (i < n) {
		while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
			i++;
		size_t start = i;
		while (i < n && v[i] != ',' && v[i] != ' ' && v[i] != '\t')
			i++;
		if (name_is(v + start, i - start, "close"))
			*close = true;
		else if (name_is(v + start, i - start, "keep-alive"))
			*keep_alive = true;
	}
}

/* Content-Length: digits only (else false); anything but zero means a body follows. */
static bool read_content_length(const char *v, size_t n, bool *has_body)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (v[i] < '0' || v[i] > '9')
			return false;
		if (v[i] != '0')
			*has_body = true;
	}
	return true;
}

static enum http_verdict not_ended(size_t len)
{
	return len >= HTTP_HEAD_MAX ? HTTP_HEAD_TOO_LARGE : HTTP_INCOMPLETE;
}

/* Length of the line at p without its LF and an optional CR before it. */
static size_t line_length(const char *p, const char *newline)
{
	size_t n = (size_t)(newline - p);
	return n > 0 && p[n - 1] == '\r' ? n - 1 : n;
}

/* The bytes of one empty line (CRLF or LF) at the start of buf, 0 without
 * one; -1 when buf is a lone CR that may become one. */
static int empty_line(const char *buf, size_t len)
{
	if (len >= 1 && buf[0] == '\n')
		return 1;
	if (len >= 2 && buf[0] == '\r' && buf[1] == '\n')
		return 2;
	return len == 1 && buf[0] == '\r' ? -1 : 0;
}

/* One header line, line[0..n) without its line end: name, colon, value with optional white space around it.
 * Notes what Connection, Content-Length and Transfer-Encoding say; false when the line is malformed. */
static bool read_header(const char *line, size_t n, bool *close, bool *keep_alive, bool *has_body)
{
	size_t name_len = 0;
	while (name_len < n && is_token_char((unsigned char)line[name_len]))
		name_len++;
	if (name_len == 0 || name_len == n || line[name_len] != ':')
		return false;
	const char *value = line + name_len + 1;
	size_t value_len = n - name_len - 1;
	while (value_len > 0 && (*value == ' ' || *value == '\t'))
		value++, value_len--;
	while (value_len > 0 && (value[value_len - 1] == ' ' || value[value_len - 1] == '\t'))
		value_len--;
	if (name_is(line, name_len, "connection"))
		read_connection_options(value, value_len, close, keep_alive);
	else if (name_is(line, name_len, "content-length"))
		return read_content_length(value, value_len, has_body);
	else if (name_is(line, name_len, "transfer-encoding"))
		*has_body = true;
	return true;
}

enum http_verdict http_parse(const char *buf, size_t len, struct http_request *req)
{
	int skip = empty_line(buf, len);
	if (skip < 0)
		return HTTP_INCOMPLETE;
	const char *start = buf;
	buf += skip;
	len -= (size_t)skip;
	const char *end = buf + (len < HTTP_HEAD_MAX ? len : HTTP_HEAD_MAX);
	const char *newline = memchr(buf, '\n', (size_t)(end - buf));
	enum http_verdict method;
	if (!newline)
		return len == 0 ? HTTP_INCOMPLETE
		       : check_request_line(buf, (size_t)(end - buf), false, &method) < 0 ? HTTP_BAD_REQUEST
											  : not_ended(len);
	int minor = check_request_line(buf, line_length(buf, newline), true, &method);
	if (minor < 0)
		return HTTP_BAD_REQUEST;

	bool close = false, keep_alive = false, has_body = false;
	const char *p = newline + 1;
	for (;;) {
		newline = memchr(p, '\n', (size_t)(end - p));
		if (!newline)
			return not_ended(len);
		size_t n = line_length(p, newline);
		if (n == 0)
			break;
		if (!read_header(p, n, &close, &keep_alive, &has_body))
			return HTTP_BAD_REQUEST;
		p = newline + 1;
	}
	req->head_len = (size_t)(newline + 1 - start);
	req->keep_alive = !close && (minor == 1 || keep_alive);
	if (method == HTTP_BAD_METHOD)
		return HTTP_BAD_METHOD;
	/* The body of a GET or HEAD would be taken for the next request: refuse it. */
	return has_body ? HTTP_BAD_REQUEST : method;
}
