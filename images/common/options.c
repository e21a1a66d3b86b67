/*
 * options.c - a program's command line, read from a table of its options
 * (options.h): getopt_long over the table, each value checked and set, and
 * --help printed from the table.
 */
#include "options.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* getopt_long's key for option i of the table: FIRST_KEY + i, past any character, so that -h stays 'h'. */
#define FIRST_KEY 256
/* Room for "--name VALUE" and for a default on --help's lines. */
#define TEXT_SIZE 32

/* ---------------------------------------------------------------- --help */

/* The option's value as --help shows it ("none" for no text), or "" for none shown. */
static void format_default(const struct option_spec *o, char *buf, size_t size)
{
	if (o->no_default || o->act)
		buf[0] = '\0';
	else if (o->text)
		snprintf(buf, size, "%s", *o->text && **o->text ? *o->text : "none");
	else if (o->whole)
		snprintf(buf, size, "%ld", *o->whole);
	else if (o->integer)
		snprintf(buf, size, "%d", *o->integer);
	else
		snprintf(buf, size, "%g", *o->real);
}

/* One line of --help: the option, its default (unless ""), its meaning. */
static void print_line(const struct options_layout *l, const char *option, const char *value, const char *meaning)
{
	int used = printf("  %-*s", l->option_width, option);
	if (l->meaning_at) {
		if (*value)
			used += printf(" %s", value);
		printf("%*s%s\n", used < l->meaning_at ? l->meaning_at - used : 1, "", meaning);
	} else if (*value) {
		printf(" %-*s (default %s)\n", l->meaning_width, meaning, value);
	} else {
		printf(" %s\n", meaning);
	}
}

static _Noreturn void print_help(const struct command_line *cl, char (*defaults)[TEXT_SIZE])
{
	fputs(cl->usage, stdout);
	for (size_t i = 0; i < cl->count; i++) {
		const struct option_spec *o = &cl->options[i];
		char option[TEXT_SIZE];
		snprintf(option, sizeof(option), "--%s%s%s", o->name, o->value_name ? " " : "",
			 o->value_name ? o->value_name : "");
		print_line(&cl->layout, option, defaults[i], o->help);
	}
	print_line(&cl->layout, "--help", "", cl->help_meaning);
	exit(0);
}

/* ---------------------------------------------------------------- values */

/* A whole number within the option's bounds, or else within lowest..highest (its variable's). */
static long parse_whole(const struct command_line *cl, const struct option_spec *o, const char *text, long lowest,
			long highest)
{
	bool bounded = o->min || o->max;
	long min = bounded ? o->min : lowest, max = bounded ? o->max : highest;
	char *end;
	errno = 0;
	long value = strtol(text, &end, 10);
	if (errno || end == text || *end || value < min || value > max) {
		if (bounded)
			cl->says.complain(cl->says.not_within, o->name, min, max, text);
		cl->says.complain(cl->says.not_whole, o->name, text);
	}
	return value;
}

static double parse_real(const struct command_line *cl, const struct option_spec *o, const char *text)
{
	char *end;
	errno = 0;
	double value = strtod(text, &end);
	if (errno || end == text || *end || !isfinite(value))
		cl->says.complain(cl->says.not_number, o->name, text);
	return value;
}

/* Sets the option's variable from its value, or does what it says. */
static void set_option(const struct command_line *cl, const struct option_spec *o, const char *value)
{
	if (o->act)
		o->act();
	else if (o->text)
		*o->text = value;
	else if (o->whole)
		*o->whole = parse_whole(cl, o, value, LONG_MIN, LONG_MAX);
	else if (o->integer)
		*o->integer = (int)parse_whole(cl, o, value, INT_MIN, INT_MAX);
	else
		*o->real = parse_real(cl, o, value);
}

/* ---------------------------------------------------------------- the command line */

void options_parse(const struct command_line *cl, int argc, char **argv)
{
	struct option long_options[cl->count + 2];
	char defaults[cl->count][TEXT_SIZE]; /* taken before any option is read */
	for (size_t i = 0; i < cl->count; i++) {
		const struct option_spec *o = &cl->options[i];
		long_options[i] = (struct option){ o->name, o->value_name ? required_argument : no_argument, NULL,
						   FIRST_KEY + (int)i };
		format_default(o, defaults[i], sizeof(defaults[i]));
	}
	long_options[cl->count] = (struct option){ "help", no_argument, NULL, 'h' };
	long_options[cl->count + 1] = (struct option){ 0 };

	opterr = 0;
	int key;
	while ((key = getopt_long(argc, argv, cl->short_help ? ":h" : ":", long_options, NULL)) != -1) {
		if (key == 'h')
			print_help(cl, defaults);
		if (key == ':')
			cl->says.complain(cl->says.missing, argv[optind - 1]);
		if (key == '?')
			cl->says.complain(cl->says.unknown, argv[optind - 1]);
		set_option(cl, &cl->options[key - FIRST_KEY], optarg);
	}
	if (optind < argc)
		cl->says.complain(cl->says.unexpected, argv[optind]);
}
