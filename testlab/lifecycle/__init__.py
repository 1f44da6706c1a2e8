"""Host lifecycle and blame: a reused VM's uses since its last wipe, and what they tell after a failure.

Pure: no database, no I/O. `model` holds the data (a `Use` of a VM, a `Lifecycle` between two
wipes); `history` writes and reads the short history string each task keeps; `blame` ranks the steps
that most often precede failures of other jobs on the same machine; `protection` decides when a VM
should be wiped because its recent failures point at an earlier use; `reuse` when a reused VM must
be wiped after a task. docs/lifecycle.md explains them.
"""

from testlab.lifecycle.blame import (
    PRIOR_WEIGHT,
    FollowerCounts,
    Scorer,
    Suspect,
    SuspectKind,
    Tally,
    blame,
    count_followers,
    posterior_mean,
)
from testlab.lifecycle.history import (
    KEEP_RECENT,
    MAX_LENGTH,
    Elided,
    HistoryEntry,
    format_history,
    history_entries,
    parse_history,
    render_history,
)
from testlab.lifecycle.model import FAILING, SUCCEEDING, Lifecycle, Use, UseKind, at_moment
from testlab.lifecycle.protection import DEFAULT_K, WipeAdvice, wipe_advice
from testlab.lifecycle.reuse import DEFAULT_WIPE, ReusePolicy, Wipe, wipe_reason

__all__ = [
    "DEFAULT_K",
    "DEFAULT_WIPE",
    "FAILING",
    "KEEP_RECENT",
    "MAX_LENGTH",
    "PRIOR_WEIGHT",
    "ReusePolicy",
    "SUCCEEDING",
    "Elided",
    "FollowerCounts",
    "HistoryEntry",
    "Lifecycle",
    "Scorer",
    "Suspect",
    "SuspectKind",
    "Tally",
    "Use",
    "UseKind",
    "Wipe",
    "WipeAdvice",
    "at_moment",
    "blame",
    "count_followers",
    "format_history",
    "history_entries",
    "parse_history",
    "posterior_mean",
    "render_history",
    "wipe_advice",
    "wipe_reason",
]
