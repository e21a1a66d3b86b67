/*
 * options.h - a program's command line, read from a table of its options.
 *
 * Each option sets one variable of the program (a string, a whole number, a
 * number) or acts (runs a function), and --help prints the table.  Options
 * are long ones: --name VALUE, --name=VALUE, or a unique prefix of the name,
 * in any order, the last of an option winning; no other argument is taken.
 * --help shows each option's default: the value its variable holds before the
 * command line is read.
 *
 * A mistake on the command line is said in the program's own words (struct
 * options_messages, printf formats) through its own complaint (its
 * usage_error), which prints one line and exits 2.  Checks across options are
 * the program's, after options_parse.
 */
#ifndef OPTIONS_H
#define OPTIONS_H

#include <stdbool.h>
#include <stddef.h>

/* One option: exactly one of text, whole, integer, real and act is set. */
struct option_spec {
	const char *name;       /* --name */
	const char *value_name; /* its value in --help; NULL for an option that acts */
	const char **text;      /* set to the value */
	long *whole;            /* set to the value, a whole number */
	int *integer;           /* the same, in an int */
	double *real;           /* set to the value, a finite number */
	void (*act)(void);      /* run when the option is read */
	long min, max;          /* a whole number's bounds; both 0: any that its variable holds */
	bool no_default;        /* --help shows no default (an option the program requires) */
	const char *help;       /* its meaning, in --help */
};

/* What the program says of a mistake: a format each, given to complain. */
struct options_messages {
	const char *unknown;    /* an option not in the table: %s, the argument */
	const char *missing;    /* an option without its value: %s, the argument */
	const char *not_whole;  /* %s, the option's name; %s, the value (a whole number without bounds) */
	const char *not_within; /* %s, the option's name; %ld and %ld, its bounds; %s, the value */
	const char *not_number; /* %s, the option's name; %s, the value */
	const char *unexpected; /* an argument that is no option: %s, the argument */
	/* The program's usage_error: prints the message as one line, and exits 2. */
	void (*complain)(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
};

/* Where --help puts an option's parts on its line: "--name VALUE" after two spaces, padded to option_width; then
 * with meaning_at 0 the meaning (padded to meaning_width when a default follows) and " (default X)"; or else the
 * default and the meaning after meaning_at characters of the line (at least one space after the default). */
struct options_layout {
	int option_width;
	int meaning_at;
	int meaning_width;
};

struct command_line {
	const char *usage;          /* --help's text above the options */
	const struct option_spec *options;
	size_t count;
	const char *help_meaning;   /* --help's own line, the last */
	bool short_help;            /* -h is --help too */
	struct options_layout layout;
	struct options_messages says;
};

/* Sets the options' variables from argv, or prints --help on stdout and exits 0, or says a mistake and exits 2. */
void options_parse(const struct command_line *cl, int argc, char **argv);

#endif
