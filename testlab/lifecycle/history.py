"""The history string: a VM's uses since its last wipe, in one short line a person can read.

A task stores this string when it starts and again when it ends, so the history survives the next
wipe and the garbage collection of the use rows. It is written for a table column, and it turns back
into a list (`parse_history`) for pages and scripts. The grammar (docs/lifecycle.md has examples):

    history  = "" / item *( " " item )
    item     = group / outside / elided
    group    = [ job ] ":" use *( "," use )   uses by one job, in order; no job: the task's own job
    use      = [ "+" ] [ "@" ] step [ "*" repeat ]
    outside  = [ "+" ] ( "exec" / "power-cycle" ) "#" id
    elided   = "(" count ")" / "(" count "+" count ")" / "(+" count ")"

`+` marks a use that was still running when the string was made (a concurrent use; never on the
task's own job), `@` a preparation use, `*N` N identical uses in a row (N >= 2). `(5)` stands for 5
earlier uses left out, `(5+2)` for 5 of them and 2 concurrent ones (only when the length cap leaves
no other choice), `(+2)` for 2 concurrent ones alone. Numbers are decimal without leading zeros, at
most 18 digits; a step is `[A-Za-z0-9][A-Za-z0-9._-]*`, at most 100 characters, so none of the
separators can appear in one and every string has exactly one reading.

Which uses are shown (`history_entries`): all of them, except that of the earlier ordinary uses by
other jobs only the latest `keep_recent` are kept; the rest become counts. If the line is still
longer than `max_length`, more uses are left out, least telling first: ordinary uses by other jobs,
then their preparation uses and out-of-job uses, then the task's own job's uses, and concurrent
uses last of all, oldest first within each.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from testlab.domain.inputlimits import preview
from testlab.lifecycle.model import MAX_ID_DIGITS, Use, UseKind, check_id, check_step_name

KEEP_RECENT: Final = 5  # earlier ordinary uses by other jobs shown before they are counted instead
MAX_LENGTH: Final = 500  # characters of a history string
# The shortest cap that always fits: everything left out is one "(N+M)" of two 18-digit numbers.
MIN_LENGTH: Final = 2 * MAX_ID_DIGITS + 3

_NUMBER = re.compile(r"0|[1-9][0-9]*")
_USE = re.compile(r"(?P<concurrent>\+)?(?P<prepare>@)?(?P<step>[^*]*)(?:\*(?P<repeat>[^*]*))?")
_OUTSIDE = re.compile(r"(?P<concurrent>\+)?(?P<kind>exec|power-cycle)#(?P<id>.*)")
_ELIDED = re.compile(r"\((?P<count>[^+]*)(?:\+(?P<concurrent>.*))?\)")


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One use as the history string shows it.

    `job` is None for an out-of-job use and for a use of the task's own job (`own`), which the string
    writes without its job id. `use_id` is set for out-of-job uses only: they are known by it.
    """

    kind: str
    job: int | None = None
    step: str | None = None
    use_id: int | None = None
    own: bool = False
    concurrent: bool = False

    def __post_init__(self) -> None:
        if self.kind not in UseKind.ALL:
            raise ValueError(f"unknown use kind {self.kind!r}")
        if self.kind in UseKind.IN_JOB:
            if self.step is None or self.use_id is not None:
                raise ValueError(f"a {self.kind} entry has a step and no use id")
            check_step_name(self.step)
            if self.own != (self.job is None):
                raise ValueError("an entry has a job id unless it is of the task's own job")
            if self.job is not None:
                check_id(self.job, "job id")
            if self.own and self.concurrent:
                raise ValueError("the task's own job is never marked concurrent")
        else:
            if self.job is not None or self.step is not None or self.own or self.use_id is None:
                raise ValueError(f"an out-of-job entry ({self.kind}) has a use id and no job or step")
            check_id(self.use_id, "use id")


@dataclass(frozen=True, slots=True)
class Elided:
    """Uses left out of the string: `count` earlier ones and `concurrent` concurrent ones."""

    count: int
    concurrent: int = 0

    def __post_init__(self) -> None:
        for value in (self.count, self.concurrent):
            check_id(value, "count")
        if self.count + self.concurrent == 0:
            raise ValueError("an elided entry stands for at least one use")


Item = HistoryEntry | Elided


def format_history(
    uses: Iterable[Use],
    *,
    current_job: int | None,
    keep_recent: int = KEEP_RECENT,
    max_length: int = MAX_LENGTH,
) -> str:
    """The history string of `uses` (a VM's uses since its last wipe, in order, with `concurrent`
    set as of now) for a task of `current_job` (None: for no job). At most `max_length` characters."""
    return render_history(
        history_entries(uses, current_job=current_job, keep_recent=keep_recent, max_length=max_length)
    )


def history_entries(
    uses: Iterable[Use],
    *,
    current_job: int | None,
    keep_recent: int = KEEP_RECENT,
    max_length: int = MAX_LENGTH,
) -> list[Item]:
    """What `format_history` writes, as a list: `parse_history(format_history(...))` gives it back.

    The string cannot carry task ids, times, actors or outcomes, nor a use of the task's own job being
    still running, so the entries do not either. See the module's docstring for what is left out.
    """
    if keep_recent < 0:
        raise ValueError(f"keep_recent cannot be negative, got {keep_recent}")
    if max_length < MIN_LENGTH:
        raise ValueError(f"max_length must be at least {MIN_LENGTH}, got {max_length}")
    if current_job is not None:
        check_id(current_job, "job id")
    entries = [_entry(use, current_job) for use in uses]
    ranks = [_rank(entry) for entry in entries]
    ordinary = [i for i, rank in enumerate(ranks) if rank == 0]
    left_out = set(ordinary[: max(0, len(ordinary) - keep_recent)])
    shown = _collapse(entries, left_out)
    if len(render_history(shown)) <= max_length:
        return shown
    # Leave out more, least telling first, until the line fits. Leaving one more out can lengthen
    # the line (a group split in two), so this finds a short enough prefix of that order by
    # bisection; leaving everything out always fits (one count).
    order = sorted((i for i in range(len(entries)) if i not in left_out), key=lambda i: (ranks[i], i))
    low, high = 0, len(order)
    best = _collapse(entries, left_out | set(order))
    while low < high:
        middle = (low + high) // 2
        candidate = _collapse(entries, left_out | set(order[:middle]))
        if len(render_history(candidate)) <= max_length:
            high, best = middle, candidate
        else:
            low = middle + 1
    return best


def _entry(use: Use, current_job: int | None) -> HistoryEntry:
    if not use.in_job:
        return HistoryEntry(use.kind, use_id=use.use_id, concurrent=use.concurrent)
    own = current_job is not None and use.job == current_job
    return HistoryEntry(
        use.kind,
        job=None if own else use.job,
        step=use.step,
        own=own,
        concurrent=use.concurrent and not own,
    )


def _rank(entry: HistoryEntry) -> int:
    """How telling a use is; the lowest ranks are left out first."""
    if entry.concurrent:
        return 3
    if entry.own:
        return 2
    return 0 if entry.kind == UseKind.TASK else 1


def _collapse(entries: Sequence[HistoryEntry], left_out: set[int]) -> list[Item]:
    """The entries with each run of left-out ones replaced by one count."""
    items: list[Item] = []
    count = concurrent = 0
    for i, entry in enumerate(entries):
        if i in left_out:
            if entry.concurrent:
                concurrent += 1
            else:
                count += 1
            continue
        if count or concurrent:
            items.append(Elided(count, concurrent))
            count = concurrent = 0
        items.append(entry)
    if count or concurrent:
        items.append(Elided(count, concurrent))
    return items


def render_history(items: Iterable[Item]) -> str:
    """Write entries and counts as a history string: consecutive uses by one job form one group, and
    identical uses in a row within it are written once with their number."""
    words: list[str] = []
    group_key: tuple[bool, int | None] | None = None
    group: list[str] = []
    last: HistoryEntry | None = None
    repeat = 0

    def close_use() -> None:
        nonlocal last, repeat
        if last is not None:
            marks = ("+" if last.concurrent else "") + ("@" if last.kind == UseKind.PREPARE else "")
            group.append(f"{marks}{last.step}" + (f"*{repeat}" if repeat > 1 else ""))
        last, repeat = None, 0

    def close_group() -> None:
        nonlocal group_key
        close_use()
        if group_key is not None:
            own, job = group_key
            words.append(("" if own else str(job)) + ":" + ",".join(group))
        group.clear()
        group_key = None

    for item in items:
        if isinstance(item, HistoryEntry) and item.kind in UseKind.IN_JOB:
            key = (item.own, item.job)
            if key != group_key:
                close_group()
                group_key = key
            if last is not None and (last.kind, last.step, last.concurrent) == (
                item.kind,
                item.step,
                item.concurrent,
            ):
                repeat += 1
            else:
                close_use()
                last, repeat = item, 1
            continue
        close_group()
        if isinstance(item, Elided):
            if not item.concurrent:
                words.append(f"({item.count})")
            elif not item.count:
                words.append(f"(+{item.concurrent})")
            else:
                words.append(f"({item.count}+{item.concurrent})")
        else:
            words.append(("+" if item.concurrent else "") + f"{item.kind}#{item.use_id}")
    close_group()
    return " ".join(words)


def parse_history(text: str) -> list[Item]:
    """Turn a history string back into its entries (one per use shown) and counts.

    Raises ValueError with a one-line message naming the faulty item when `text` is not a history
    string.
    """
    if text == "":
        return []
    items: list[Item] = []
    for position, word in enumerate(text.split(" "), start=1):
        try:
            items.extend(_parse_word(word))
        except ValueError as error:
            raise ValueError(f"bad history string: item {position} {preview(word)}: {error}") from None
    return items


def _parse_word(word: str) -> list[Item]:
    if word == "":
        raise ValueError("empty (items are separated by exactly one space)")
    if word.startswith("("):
        return [_parse_elided(word)]
    if ":" in word:
        return _parse_group(word)
    match = _OUTSIDE.fullmatch(word)
    if match is None:
        raise ValueError("expected JOB:STEP, :STEP, exec#ID, power-cycle#ID or (COUNT)")
    return [
        HistoryEntry(
            match["kind"], use_id=_number(match["id"], "id"), concurrent=match["concurrent"] is not None
        )
    ]


def _parse_group(word: str) -> list[Item]:
    job_text, _, uses_text = word.partition(":")
    job = None if job_text == "" else _number(job_text, "job id")
    entries: list[Item] = []
    for use_text in uses_text.split(","):
        match = _USE.fullmatch(use_text)
        if match is None or match["step"] == "":
            raise ValueError(f"expected a step name, got {preview(use_text)}")
        step = match["step"]
        try:
            check_step_name(step)
        except ValueError:
            hint = " (the marks come first, in the order +@)" if step[:1] in "+@" else ""
            raise ValueError(f"bad step name {preview(step)}{hint}") from None
        repeat = 1
        if match["repeat"] is not None:
            repeat = _number(match["repeat"], "repeat count")
            if repeat < 2:
                raise ValueError(f"a repeat count is at least 2, got {repeat}")
        concurrent = match["concurrent"] is not None
        if concurrent and job is None:
            raise ValueError("the task's own job is never marked concurrent (+)")
        kind = UseKind.PREPARE if match["prepare"] else UseKind.TASK
        entry = HistoryEntry(kind, job=job, step=step, own=job is None, concurrent=concurrent)
        entries.extend([entry] * repeat)
    return entries


def _parse_elided(word: str) -> Elided:
    match = _ELIDED.fullmatch(word)
    if match is None:
        raise ValueError("expected (COUNT), (COUNT+COUNT) or (+COUNT)")
    count = 0 if match["count"] == "" and match["concurrent"] is not None else None
    if count is None:
        count = _number(match["count"], "count")
        if count == 0:
            raise ValueError("a count of left-out uses is at least 1")
    concurrent = 0
    if match["concurrent"] is not None:
        concurrent = _number(match["concurrent"], "count")
        if concurrent == 0:
            raise ValueError("a count of left-out concurrent uses is at least 1")
    return Elided(count, concurrent)


def _number(text: str, what: str) -> int:
    if len(text) > MAX_ID_DIGITS or _NUMBER.fullmatch(text) is None:
        raise ValueError(f"bad {what} {preview(text)}: digits without leading zeros, at most {MAX_ID_DIGITS}")
    return int(text)
