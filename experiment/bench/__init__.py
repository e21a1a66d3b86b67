"""`./run bench`: is the tool cheaper than what it measures? Side-by-side ratios taken in one run.

Each item is measured natively on this host, the server pinned to the first CPU and every client to the
others, as in the UP variant, except items 4 and 9, which run containers. The items are listed, named and
ordered in registry.ITEMS; each is measured by its module in items/ (whose docstring says what it measures)
and printed by show.py. launch.py starts the servers, dead connections and loads and reads the server CPU
they cost (the metric: server CPU time over a load divided by the replies the load generator counted);
stats.py holds the medians and the one 95% interval; runner.py runs the items chosen and writes the results
to benchmarks/results/. Items 1-3 and 6 run stats.ROUNDS interleaved rounds and report medians (ratios: the
median of the rounds' ratios); items 7 and 9 more rounds, medians with a distribution-free 95% interval. No
test asserts any of these numbers. native.py builds and runs the programs under test natively, for the
bench and the tests."""
