"""A task's log keeps its end when the output is huge, and knows how much it received."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from testlab.engine.files import CappedLog


def test_small_output_is_kept_whole(tmp_path):
    log = CappedLog(tmp_path / "log", 4096)
    log.append(b"hello\n")
    log.close()
    assert (tmp_path / "log").read_bytes() == b"hello\n"
    assert CappedLog(tmp_path / "log", 4096).received == 6


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=40), reopen=st.integers(0, 39)
)
def test_the_log_keeps_the_end_marks_the_cut_and_counts_every_byte(tmp_path_factory, chunks, reopen):
    path = tmp_path_factory.mktemp("log") / "log"
    cap = 4096
    log = CappedLog(path, cap)
    for index, chunk in enumerate(chunks):
        if index == reopen:  # an engine restarted mid-way re-opens the log and resumes
            log.close()
            log = CappedLog(path, cap)
        log.append(chunk)
    log.close()
    everything = b"".join(chunks)
    content = path.read_bytes()
    assert CappedLog(path, cap).received == len(everything)
    assert len(content) <= cap + 3000 + 100
    if content.startswith(b"[testlab: the first "):
        mark, _, kept = content.partition(b"]\n")
        cut = int(mark.split()[3])
        assert everything[cut:] == kept
    else:
        assert content == everything
