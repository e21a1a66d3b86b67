"""pipetest: every backend passes every token the asked number of times and reports it as one JSON object.
It runs under AddressSanitizer and UBSan (the build_dir fixture), and a report fails the test."""

import json
import re
import resource
import subprocess

import pytest

from experiment.bench import native

BACKENDS = ["select", "poll", "epoll", "epoll-et", "io_uring", "aio-poll"]
KERNEL_OPTIONAL = {"io_uring", "aio-poll"}
FIELDS = {"backend", "pipes", "tokens", "generations", "passes", "elapsed_s", "passes_per_s", "setup_s",
          "fd_limit", "wait_calls", "events_per_wait", "max_seconds", "stopped_by", "walk", "pipes_visited",
          "visits_min", "visits_max"}
WALK_STRIDE = 17  # pipes a token moves on per pass with --walk stride (WALK_STRIDE in pipetest.c)
# Descriptors pipetest keeps back from the limit for stdio and the backend (RESERVED_FDS in pipetest.c).
RESERVED_FDS = 16
# pipetest frees nothing before it exits, which LeakSanitizer would report; under strace it cannot work.
ENV = native.sanitized_env(detect_leaks=False)


def run(build_dir, *args, timeout=120):
    proc = subprocess.run([str(build_dir / "pipetest"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV)
    assert native.sanitizer_report(proc.stderr) is None, proc.stderr
    return proc


def run_json(build_dir, backend, *args):
    """pipetest's JSON; skips, with pipetest's own reason, when this kernel refuses io_uring or AIO poll."""
    proc = run(build_dir, "--backend", backend, *args)
    if proc.returncode == 2 and backend in KERNEL_OPTIONAL and proc.stderr.startswith(f"pipetest: {backend}:"):
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_token_makes_every_pass(build_dir, backend):
    pipes, tokens, generations = 200, 3, 3000
    result = run_json(build_dir, backend, "--pipes", pipes, "--tokens", tokens, "--generations", generations)

    assert set(result) == FIELDS
    assert (result["backend"], result["pipes"], result["tokens"], result["generations"]) == (
        backend, pipes, tokens, generations)
    assert result["walk"] == "stay"
    assert result["passes"] == tokens * generations
    assert (result["stopped_by"], result["max_seconds"]) == ("generations", 0)
    assert result["elapsed_s"] > 0 and result["setup_s"] > 0
    assert result["passes_per_s"] == pytest.approx(result["passes"] / result["elapsed_s"], rel=1e-3)
    assert result["fd_limit"] == resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    # A wait reports at least one token and at most all of them.
    assert generations <= result["wait_calls"] <= tokens * generations
    assert 1 <= result["events_per_wait"] <= tokens


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_tokens_ready_come_back_in_one_wait(build_dir, backend):
    """With a token on every pipe, each pass writes every token back before the next wait, so a backend
    that re-arms and reports all ready descriptors sees every token in every wait."""
    pipes = generations = 64
    result = run_json(build_dir, backend, "--pipes", pipes, "--tokens", pipes, "--generations", generations)

    assert result["passes"] == pipes * generations
    assert result["wait_calls"] == generations
    assert result["events_per_wait"] == pipes


def stay_pipe(token, pipes, tokens):
    """The pipe a token keeps with --walk stay: the last of its share."""
    return (token + 1) * pipes // tokens - 1


def stride_pipe(token, passes, pipes, tokens):
    """The pipe a token is on after that many passes with --walk stride: the 2002 pipetest's walk."""
    return (passes * WALK_STRIDE + token + token * (pipes // tokens)) % pipes


def run_visits(build_dir, tmp_path, backend, walk, pipes, tokens, generations):
    """pipetest's JSON and its --visits file: the passes each pipe carried, in pipe order."""
    path = tmp_path / "visits"
    result = run_json(build_dir, backend, "--walk", walk, "--pipes", pipes, "--tokens", tokens, "--generations",
                      generations, "--visits", path)
    visits = [int(line) for line in path.read_text().splitlines()]
    assert len(visits) == pipes
    assert result["walk"] == walk
    assert result["passes"] == sum(visits) == tokens * generations
    assert result["pipes_visited"] == sum(1 for v in visits if v)
    assert (result["visits_min"], result["visits_max"]) == (min(visits), max(visits))
    return result, visits


@pytest.mark.parametrize("backend", BACKENDS)
def test_stay_passes_every_token_on_its_own_pipe_only(build_dir, tmp_path, backend):
    pipes, tokens, generations = 101, 3, 500
    result, visits = run_visits(build_dir, tmp_path, backend, "stay", pipes, tokens, generations)

    own = {stay_pipe(t, pipes, tokens) for t in range(tokens)}
    assert own == {32, 66, 100}  # the last pipe of each third, as in pipetest.c
    assert {p for p, v in enumerate(visits) if v} == own
    assert all(visits[p] == generations for p in own)
    assert result["pipes_visited"] == tokens


@pytest.mark.parametrize("backend", BACKENDS)
def test_stride_carries_a_token_through_every_pipe_when_17_does_not_divide_the_pipes(build_dir, tmp_path,
                                                                                      backend):
    """101 is prime to 17: a token 17 pipes on per pass is on every pipe once in 101 passes."""
    pipes, tokens, generations = 101, 3, 3 * 101 + 7
    result, visits = run_visits(build_dir, tmp_path, backend, "stride", pipes, tokens, generations)

    assert result["pipes_visited"] == pipes
    assert min(visits) >= 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pipes, tokens, generations", [
    (40, 2, 25),   # fewer passes than pipes: each token's path is seen
    (34, 1, 100),  # 17 divides the pipes: the token visits only pipes 0 and 17
    (10, 10, 60),  # tokens t and t+5 start on one pipe and walk together: one read carries both
])
def test_stride_walks_the_2002_formula(build_dir, tmp_path, backend, pipes, tokens, generations):
    """Every pipe's passes are what the formula gives: token t's p-th pass is on pipe
    (p x 17 + t + t x (pipes / tokens)) mod pipes."""
    result, visits = run_visits(build_dir, tmp_path, backend, "stride", pipes, tokens, generations)

    expected = [0] * pipes
    for t in range(tokens):
        for done in range(generations):
            expected[stride_pipe(t, done, pipes, tokens)] += 1
    assert visits == expected
    if pipes == 34:
        assert {p for p, v in enumerate(visits) if v} == {0, 17}
    if tokens == 10:
        # Five pipes carry two tokens each, so five events make the ten passes of a generation.
        assert result["wait_calls"] == generations
        assert result["events_per_wait"] == 5


def test_max_seconds_ends_the_passing_before_the_generations_do(build_dir):
    """A sweep bounds slow runs in time: 10^9 passes cannot happen within 1 s on any machine of today."""
    generations = 1_000_000_000
    result = run_json(build_dir, "poll", "--pipes", 2000, "--generations", generations, "--max-seconds", 1)

    assert (result["stopped_by"], result["max_seconds"]) == ("max-seconds", 1)
    assert 0 < result["passes"] < generations
    assert result["passes_per_s"] == pytest.approx(result["passes"] / result["elapsed_s"], rel=1e-3)


def test_default_backend_runs_with_defaults(build_dir):
    proc = run(build_dir)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["passes"] == result["tokens"] * result["generations"]


def test_more_pipes_than_descriptors_is_refused_naming_the_maximum(build_dir):
    hard_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    maximum = (hard_limit - RESERVED_FDS) // 2

    proc = run(build_dir, "--backend", "epoll", "--pipes", maximum + 1, "--generations", 1)

    assert proc.returncode == 2
    assert proc.stdout == ""
    assert (f"pipetest: {maximum + 1} pipes need {2 * (maximum + 1) + RESERVED_FDS} descriptors; "
            f"this host allows {hard_limit} per process: use --pipes {maximum} or fewer") in proc.stderr


def test_the_named_maximum_of_pipes_works(build_dir):
    maximum = (resource.getrlimit(resource.RLIMIT_NOFILE)[1] - RESERVED_FDS) // 2
    if maximum > 20000:
        pytest.skip(f"{maximum} pipes is more than this test should create")

    result = run_json(build_dir, "epoll", "--pipes", maximum, "--generations", 10)

    assert result["pipes"] == maximum
    assert result["passes"] == 10


def test_select_refuses_descriptors_beyond_fd_setsize_naming_what_fits(build_dir):
    proc = run(build_dir, "--backend", "select", "--pipes", 2000, "--generations", 1)

    assert proc.returncode == 2
    found = re.search(r"^pipetest: select cannot watch descriptor (\d+): use --pipes (\d+) or fewer", proc.stderr)
    assert found, proc.stderr
    assert int(found[1]) >= 1024  # FD_SETSIZE
    assert run_json(build_dir, "select", "--pipes", found[2], "--generations", 10)["passes"] == 10


def test_unknown_backend_is_a_usage_error(build_dir):
    proc = run(build_dir, "--backend", "kqueue")

    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip() == (
        "pipetest: unknown backend 'kqueue' (choose select|poll|epoll|epoll-et|io_uring|aio-poll)")


@pytest.mark.parametrize("args, complaint", [
    (["--pipes", "0"], "--pipes needs a whole number from 1"),
    (["--generations", "many"], "--generations needs a whole number from 1"),
    (["--pipes", "4", "--tokens", "5"], "5 tokens need as many pipes: use --tokens 4 or fewer"),
    (["--sockets", "4"], "unknown option"),
    (["--walk", "zigzag"], "unknown walk 'zigzag' (choose stay|stride)"),
    (["extra"], "unexpected argument 'extra'"),
])
def test_bad_arguments_are_usage_errors(build_dir, args, complaint):
    proc = run(build_dir, *args)

    assert proc.returncode == 2
    assert complaint in proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def test_help_lists_every_option_with_its_default(build_dir):
    proc = run(build_dir, "--help")

    assert proc.returncode == 0
    for option in ("--backend", "--pipes", "--tokens", "--generations", "--max-seconds", "--walk", "--visits"):
        assert re.search(rf"^  {option} .*\(default \S+\)$", proc.stdout, re.MULTILINE), option


@pytest.mark.needs_tool("strace")
@pytest.mark.parametrize("backend, syscall, error, reason", [
    ("io_uring", "io_uring_setup", "EPERM", "io_uring: io_uring_setup: Operation not permitted ("),
    ("io_uring", "io_uring_setup", "ENOSYS", "io_uring: io_uring_setup: Function not implemented ("),
    ("aio-poll", "io_setup", "EAGAIN", "fs.aio-max-nr="),
    ("aio-poll", "io_submit", "EINVAL", "predates AIO poll"),
])
def test_a_backend_the_kernel_refuses_is_a_usage_error_with_the_reason(build_dir, backend, syscall, error,
                                                                       reason):
    """The refusal is staged with strace's fault injection, as seccomp or a sysctl would make it."""
    proc = subprocess.run(["strace", "-o", "/dev/null", "-e", f"trace={syscall}", "-e",
                           f"inject={syscall}:error={error}", str(build_dir / "pipetest"), "--backend", backend],
                          capture_output=True, text=True, timeout=60, env=ENV)

    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"pipetest: {backend}: ")
    assert reason in proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def test_make_check_builds_without_warnings(tmp_path):
    proc = subprocess.run(["make", "-C", str(native.IMAGES), "check", f"BUILD={tmp_path}"],
                          capture_output=True, text=True, timeout=300)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "werror" / "pipetest").exists()
