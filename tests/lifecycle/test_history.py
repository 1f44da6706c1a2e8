"""The history string: the documented examples, what is left out and when, and the round trip."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from testlab.lifecycle.history import (
    MIN_LENGTH,
    Elided,
    HistoryEntry,
    format_history,
    history_entries,
    parse_history,
    render_history,
)
from testlab.lifecycle.model import MAX_ID, Use, UseKind
from tests.lifecycle.strategies import history_items, use_lists


def task(job: int, step: str, *, concurrent: bool = False) -> Use:
    return Use(UseKind.TASK, job=job, step=step, concurrent=concurrent)


def prep(job: int, step: str, *, concurrent: bool = False) -> Use:
    return Use(UseKind.PREPARE, job=job, step=step, concurrent=concurrent)


def exec_(use_id: int, *, concurrent: bool = False) -> Use:
    return Use(UseKind.EXEC, use_id=use_id, actor="cli alice", concurrent=concurrent)


def cycle(use_id: int) -> Use:
    return Use(UseKind.POWER_CYCLE, use_id=use_id, actor="cli bob")


# The examples of docs/lifecycle.md, as (uses, the task's job, string).
WARM_BUILD_VM = (
    [task(job, "build") for job in range(1231, 1245)]
    + [prep(1249, "setup"), task(1249, "build"), exec_(87), task(1250, "build"), task(1250, "test")],
    1250,
    "(10) 1241:build 1242:build 1243:build 1244:build 1249:@setup,build exec#87 :build,test",
)
SHARED_HOST = (
    [prep(1240, "prepare-host"), task(1241, "build", concurrent=True), task(1242, "build", concurrent=True)]
    + [task(1243, "build", concurrent=True)],
    1243,
    "1240:@prepare-host 1241:+build 1242:+build :build",
)
MANY_TASKS = (
    [task(1298, "smoke"), task(1299, "smoke"), task(1300, "smoke")]
    + [prep(1301, "install")]
    + [task(1301, "test")] * 12
    + [task(1302, "bench", concurrent=True)],
    1301,
    "1298:smoke 1299:smoke 1300:smoke :@install,test*12 1302:+bench",
)
POWER_CYCLED = (
    [task(1400, "stress"), cycle(311), exec_(312), prep(1401, "flash"), task(1401, "boot")],
    1401,
    "1400:stress power-cycle#311 exec#312 :@flash,boot",
)
NO_JOB = ([task(7, "a"), task(7, "b"), task(8, "a"), exec_(9, concurrent=True)], None, "7:a,b 8:a +exec#9")


@pytest.mark.parametrize("case", [WARM_BUILD_VM, SHARED_HOST, MANY_TASKS, POWER_CYCLED, NO_JOB])
def test_documented_examples(case):
    uses, job, text = case
    assert format_history(uses, current_job=job) == text
    assert parse_history(text) == history_entries(uses, current_job=job)


def test_parse_gives_one_entry_per_use_shown():
    assert parse_history("(2) 12:@setup,+build*2 exec#87 :test (1+1)") == [
        Elided(2),
        HistoryEntry(UseKind.PREPARE, job=12, step="setup"),
        HistoryEntry(UseKind.TASK, job=12, step="build", concurrent=True),
        HistoryEntry(UseKind.TASK, job=12, step="build", concurrent=True),
        HistoryEntry(UseKind.EXEC, use_id=87),
        HistoryEntry(UseKind.TASK, step="test", own=True),
        Elided(1, 1),
    ]
    assert parse_history("") == []


def test_the_own_job_is_written_without_its_id_and_never_marked_concurrent():
    uses = [
        task(5, "build", concurrent=True),
        task(6, "build", concurrent=True),
        task(5, "test", concurrent=True),
    ]
    assert format_history(uses, current_job=5) == ":build 6:+build :test"
    assert format_history(uses, current_job=None) == "5:+build 6:+build 5:+test"


def test_only_the_latest_ordinary_uses_of_other_jobs_are_kept():
    uses = [task(job, "build") for job in range(1, 9)] + [task(9, "test")]
    assert format_history(uses, current_job=9, keep_recent=3) == "(5) 6:build 7:build 8:build :test"
    assert format_history(uses, current_job=9, keep_recent=0) == "(8) :test"
    assert format_history(uses, current_job=9, keep_recent=8) == " ".join(
        [*(f"{job}:build" for job in range(1, 9)), ":test"]
    )


def test_concurrent_preparation_and_out_of_job_uses_are_not_counted_away():
    uses = [
        task(1, "a"),
        prep(2, "setup"),
        task(3, "a"),
        task(4, "a", concurrent=True),
        task(5, "a"),
        exec_(6),
        task(7, "a"),
        task(8, "a"),
    ]
    assert format_history(uses, current_job=8, keep_recent=1) == "(1) 2:@setup (1) 4:+a (1) exec#6 7:a :a"


def test_the_length_cap_leaves_out_the_least_telling_first():
    uses = [
        prep(100, "setup"),
        exec_(5),
        task(101, "compile-all"),
        task(102, "compile-all", concurrent=True),
        task(103, "compile-all"),
    ]
    full = "100:@setup exec#5 101:compile-all 102:+compile-all :compile-all"
    assert format_history(uses, current_job=103) == full
    assert format_history(uses, current_job=103, max_length=len(full)) == full
    # Ordinary uses of other jobs go first, then preparation and out-of-job uses (oldest first),
    # then the task's own, and concurrent uses last.
    assert format_history(uses, current_job=103, max_length=len(full) - 1) == (
        "100:@setup exec#5 (1) 102:+compile-all :compile-all"
    )
    assert (
        format_history(uses, current_job=103, max_length=44) == "(1) exec#5 (1) 102:+compile-all :compile-all"
    )
    assert format_history(uses, current_job=103, max_length=43) == "(3) 102:+compile-all :compile-all"
    many = [task(job, "build", concurrent=True) for job in range(1000, 1100)]
    assert format_history(many, current_job=None, max_length=MIN_LENGTH) == "(+98) 1098:+build 1099:+build"
    text = format_history([*many[:50], task(7, "x"), *many[50:]], current_job=7, max_length=60)
    assert text == "(1+96) 1096:+build 1097:+build 1098:+build 1099:+build"


@given(use_lists, st.none() | st.integers(0, 6), st.integers(0, 8), st.integers(MIN_LENGTH, 700))
@settings(max_examples=400, deadline=None)  # a loaded machine must not fail it
@example([task(MAX_ID, "a" * 100, concurrent=True)] * 3, None, 0, MIN_LENGTH)
def test_round_trip(uses, job, keep_recent, max_length):
    """parse(format(x)) is x as the string represents it; the string fits its cap; every use is
    either shown, in order, or counted."""
    text = format_history(uses, current_job=job, keep_recent=keep_recent, max_length=max_length)
    items = history_entries(uses, current_job=job, keep_recent=keep_recent, max_length=max_length)
    assert parse_history(text) == items
    assert render_history(items) == text
    assert len(text) <= max_length and "\n" not in text
    shown = [item for item in items if isinstance(item, HistoryEntry)]
    counted = sum(item.count + item.concurrent for item in items if isinstance(item, Elided))
    assert len(shown) + counted == len(uses)
    everything = history_entries(uses, current_job=job, keep_recent=len(uses), max_length=10**6)
    assert all(isinstance(item, HistoryEntry) for item in everything)
    remaining = iter(everything)
    assert all(any(entry == other for other in remaining) for entry in shown)  # a subsequence
    # Concurrent uses of other jobs are left out only when nothing else is left to leave out.
    concurrent = sum(entry.concurrent for entry in everything)
    if sum(item.concurrent for item in items if isinstance(item, Elided)):
        assert all(isinstance(item, Elided) or item.concurrent for item in items)
    assert (
        sum(entry.concurrent for entry in shown)
        + sum(item.concurrent for item in items if isinstance(item, Elided))
        == concurrent
    )


@given(use_lists, st.none() | st.integers(0, 6), st.integers(0, 8))
def test_without_the_cap_only_ordinary_uses_of_other_jobs_are_counted(uses, job, keep_recent):
    items = history_entries(uses, current_job=job, keep_recent=keep_recent, max_length=10**6)
    ordinary = [
        use
        for use in uses
        if use.kind == UseKind.TASK and not use.concurrent and (job is None or use.job != job)
    ]
    counted = sum(item.count for item in items if isinstance(item, Elided))
    assert counted == max(0, len(ordinary) - keep_recent)
    assert not any(isinstance(item, Elided) and item.concurrent for item in items)


@given(st.lists(history_items(), max_size=40))
def test_any_entries_survive_render_and_parse(items):
    assert parse_history(render_history(items)) == items


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (" 1:a", "item 1 '': empty"),
        ("1:a  2:b", "item 2 '': empty"),
        ("1:a ", "item 2 '': empty"),
        ("build", "expected JOB:STEP, :STEP, exec#ID, power-cycle#ID or (COUNT)"),
        ("1:", "expected a step name, got ''"),
        ("1:a,,b", "expected a step name, got ''"),
        ("01:a", "bad job id '01'"),
        ("-1:a", "bad job id '-1'"),
        (
            "1234567890123456789:a",
            "bad job id '1234567890123456789': digits without leading zeros, at most 18",
        ),
        ("1:-a", "bad step name '-a'"),
        ("1:a" + "b" * 100, "bad step name"),
        ("1:@+a", "bad step name '+a' (the marks come first, in the order +@)"),
        ("1:a*1", "a repeat count is at least 2, got 1"),
        ("1:a*", "bad repeat count ''"),
        ("1:a*2*3", "expected a step name"),
        (":+a", "the task's own job is never marked concurrent (+)"),
        ("exec#", "bad id ''"),
        ("exec#07", "bad id '07'"),
        ("reboot#3", "expected JOB:STEP"),
        ("@exec#3", "expected JOB:STEP"),
        ("()", "bad count ''"),
        ("(0)", "a count of left-out uses is at least 1"),
        ("(0+2)", "a count of left-out uses is at least 1"),
        ("(2+0)", "a count of left-out concurrent uses is at least 1"),
        ("(2+)", "bad count ''"),
        ("(2", "expected (COUNT), (COUNT+COUNT) or (+COUNT)"),
        ("1:a\nb", "bad step name"),
        ("1:a\tb", "bad step name"),
    ],
)
def test_bad_strings_are_refused_in_one_line(text, message):
    with pytest.raises(ValueError, match="^bad history string: ") as caught:
        parse_history(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@given(st.text(alphabet=st.sampled_from(list("0123456789:,+@*#()abx- \n")) | st.characters(), max_size=40))
def test_parse_either_reads_or_refuses_in_one_line(text):
    try:
        items = parse_history(text)
    except ValueError as error:
        assert str(error).startswith("bad history string: item ") and "\n" not in str(error)
    else:
        assert parse_history(render_history(items)) == items


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="max_length must be at least"):
        format_history([], current_job=None, max_length=MIN_LENGTH - 1)
    with pytest.raises(ValueError, match="keep_recent cannot be negative"):
        format_history([], current_job=None, keep_recent=-1)
    with pytest.raises(ValueError, match="bad job id"):
        format_history([], current_job=-1)
    with pytest.raises(ValueError, match="never marked concurrent"):
        HistoryEntry(UseKind.TASK, step="a", own=True, concurrent=True)
    with pytest.raises(ValueError, match="at least one use"):
        Elided(0, 0)
