"""The split protocols of `setdpo data prepare --split`: what each does and guarantees.

One home for the choice (docs/data.md, "Contexts, splits and history"): `PrepareConfig`
checks a name against `SPLIT_PROTOCOLS` (aliases resolved there), `builders.plan` asks
``per_user`` whether a range of users decides its own split, and `setdpo data audit` prints
``summary``, ``guarantees`` and ``not_guaranteed`` above its table and counts the checks in
``measured`` without calling them findings. The splitting itself is
`setdpo.data.sequences.chrono_split` and `leave_last_out_split`.

- ``chrono`` (LLaRA, S-DPO): one time cut for all users. No training target is at or after
  any valid or test target, of any user.
- ``leave-last-out`` ("leave-one-out": SASRec's and BERT4Rec's partition, RecBole's ``LS``
  split): per user, the last context is test, the one before valid. Each user's training ends
  before that user's valid target, but another user's training targets can be later than it:
  no global time cut. Ji, Sun, Zhang and Li, "A Critical Study on Data Leakage in Recommender
  System Offline Evaluation", ACM TOIS 41(3), 2023 (arXiv 2010.11060), show that models
  trained so recommend items that did not exist yet at the test instance's time, and that the
  amount of such future data reorders models.
"""

from __future__ import annotations

from dataclasses import dataclass

from setdpo.errors import InputError

HISTORY = "histories are the user's interactions right before the target window, oldest first"


@dataclass(frozen=True)
class SplitProtocol:
    """A split protocol: its name and aliases, whether it is decided per user (each range of
    users alone) or over all contexts, whether it reads ``split_ratios``, and what the audit says of it: ``guarantees`` (each
    checked; a finding is a bug), ``not_guaranteed`` and the checks it only ``measured``."""

    name: str
    summary: str
    per_user: bool
    takes_ratios: bool
    guarantees: tuple[str, ...]
    not_guaranteed: str
    measured: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()


SPLIT_PROTOCOLS = {
    "chrono": SplitProtocol(
        "chrono",
        "one time cut for all users: valid and test start at the first-target times at the "
        "split_ratios quantiles of all contexts (LLaRA, S-DPO)",
        per_user=False,
        takes_ratios=True,
        guarantees=(
            "every training window lies before the valid cut and every valid window before "
            "the test cut (stats.json split_cuts); per user, every window ends before the "
            "user's first target in a later split",
            "a global time cut: no training target at or after the earliest valid or test "
            "target of any user",
            HISTORY,
        ),
        not_guaranteed="every user in valid and test: a user whose interactions end before a "
        "cut has no context after it",
    ),
    "leave-last-out": SplitProtocol(
        "leave-last-out",
        "per user: the last context is test, the latest one whose window ends before it valid, "
        "the contexts whose windows end before that train (SASRec, BERT4Rec)",
        per_user=True,
        takes_ratios=False,
        guarantees=(
            "per user, every training window ends before the user's valid target and every "
            "valid window before the test target, in sequence order (time, then file order), "
            "and no window time is later than that target",
            HISTORY,
        ),
        not_guaranteed="a global time cut: another user's training targets can be later than "
        "a test target (Ji et al. 2023, 'A Critical Study on Data Leakage in Recommender "
        "System Offline Evaluation'); global_time_cut counts them",
        measured=("global_time_cut",),
        aliases=("leave-one-out", "leave-last-one-out"),
    ),
}
ALIASES = {alias: p.name for p in SPLIT_PROTOCOLS.values() for alias in p.aliases}


def split_protocol(name: str) -> SplitProtocol:
    """The protocol named `name` (or one of its aliases)."""
    protocol = SPLIT_PROTOCOLS.get(ALIASES.get(name, name))
    if protocol is None:
        raise InputError(
            f"split {name!r} is not one of {list(SPLIT_PROTOCOLS)} (or an alias: "
            f"{', '.join(ALIASES)})"
        )
    return protocol
