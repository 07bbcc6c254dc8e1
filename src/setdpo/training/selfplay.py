"""Self-play: rounds of SFT, then preference alignment against the model's own top predictions.

SPRec (Gao et al. 2025, "SPRec: Self-Play to Debias LLM-based Recommendation", arXiv
2412.09243, Algorithm 1; the authors' loop is `shell/SPRec.sh` of RegionCh/SPRec): each round
fine-tunes on the real positives, then runs DPO whose chosen answer is the real positive and
whose rejected answer is the model's own prediction, so the items the model over-recommends
are pushed down where it recommends them. Here each round is two ordinary runs:

    OUT/round-r/sft     `train_sft` on the positives, starting from round r - 1's preference
                        run (its adapters merged, a fresh adapter on top); round 1 starts
                        from `model`, as `setdpo train sft` does
    OUT/round-r/pref    `train_pref` with `init` = that SFT run, which is the starting policy
                        and the reference (at the policy's precision: `train_pref` sees to it),
                        and `negatives: self`: per context, the `num_negatives` candidates that
                        are not positives and the SFT run scores highest, the same every epoch
    OUT/selfplay.json   {"setdpo_selfplay": 1, "rounds": R, "start": ..., "completed":
                         [{"round": r, "sft": "round-r/sft", "pref": "round-r/pref"}, ...],
                         "result": "round-R/pref" (null until the last round ends)}

The last round's preference run is the result. Paths in `selfplay.json` are relative to OUT
and every run's `resolved_config.yaml` names its `init` / `model` relative to itself
(`setdpo.paths`), so OUT trains on, evaluates and serves after a move.

`negatives_from: previous` takes each round's negatives from the model before its SFT
instead (round r - 1's preference run), as the authors' code does.

The stages' fields are a protocol file's ``sft:`` and ``pref:`` sections (`load_config`).
Selfplay sets, in every round, the stages' `output_dir`, the SFT `model` of later rounds, and
the preference `init`, `negatives_from` (from its own `negatives_from`) and `negatives: self`:
a section naming one of the first three is refused; a pref section's other `negatives`, meant
for `setdpo train pref`, is replaced with a warning. Unless the pref section says otherwise,
`num_negatives` is 1 (`PREF_DEFAULTS`, SPRec's one rejected item). SPRec's own settings are
``pref: {loss: dpo, beta: 0.1}``.

Not SPRec's: the negatives are chosen among each context's candidates in the data, by their
log-probs, not generated over the whole catalog; and by default by the round's SFT model,
the stage's starting policy and reference, where the authors' loop generates them with the
model before that SFT (`negatives_from: previous`). Each round trains on the whole training
split (the authors draw a fresh sample of 2048 contexts per round).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from setdpo import protocol
from setdpo.atomic import atomic_write_json
from setdpo.errors import InputError
from setdpo.model.runs import is_run_dir
from setdpo.paths import resolve_fields, stored
from setdpo.training.config import PrefConfig, SFTConfig

logger = logging.getLogger(__name__)

RECORD_FILE = "selfplay.json"
RECORD_VERSION = 1
# What selfplay gives the preference stage unless its section says otherwise (SPRec: one
# rejected item per context).
PREF_DEFAULTS = {"num_negatives": 1}
# Fields selfplay sets in every round (a section naming them is refused).
_SET = {"sft": ("output_dir",), "pref": ("output_dir", "init", "negatives_from")}


@dataclass
class SelfPlayConfig:
    """SPRec-style self-play: `rounds` of SFT then preference alignment (module docstring)."""

    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Output folder: round-R/sft, round-R/pref and selfplay.json.",
            "aliases": ["--out"],
        },
    )
    rounds: int = field(
        default=2, metadata={"help": "Self-play rounds, each an SFT run then a preference run."}
    )
    data: str | None = field(
        default=None,
        metadata={"help": "Prepared data directory of every stage (else each section's `data`)."},
    )
    model: str | None = field(
        default=None,
        metadata={
            "help": "What round 1's SFT starts from (else the sft section's `model`): a base "
            "model, or an SFT run to continue from (SPRec starts from an SFT model)."
        },
    )
    negatives_from: Literal["sft", "previous"] = field(
        default="sft",
        metadata={
            "help": "Which model's top predictions are round r's negatives: `sft` = round r's "
            "SFT model (the preference stage's starting policy and reference); `previous` = "
            "the model before that SFT, round r - 1's preference run (round 1: `model` if it "
            "is a run directory, else round 1's SFT model), as the authors' code does."
        },
    )
    sft: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "SFTConfig fields of every round (a protocol file's `sft:` section; "
            "`--sft max_steps=20,learning_rate=1.0e-4` overrides some of them)."
        },
    )
    pref: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "PrefConfig fields of every round (a protocol file's `pref:` section, "
            f"over selfplay's defaults {PREF_DEFAULTS}; `--pref loss=dpo,beta=0.1`)."
        },
    )

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise InputError("output_dir (--out) is required: the self-play folder")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise InputError(f"rounds must be an integer >= 1, got {self.rounds!r}")
        for name in ("sft", "pref"):
            section = getattr(self, name)
            given = sorted(set(_SET[name]) & set(section))
            if given:
                raise InputError(
                    f"{name} section: selfplay sets {given} in every round (OUT/round-R/...): "
                    "remove them"
                )
            if name == "pref" and section.get("negatives", "self") != "self":
                logger.warning(
                    "self-play's preference stages use negatives: self (the pref section's "
                    "negatives: %s is for `setdpo train pref`)",
                    section["negatives"],
                )
            self.stage(name, 1)  # every field checked now, not after round 1's SFT

    def run_dir(self, name: str, round_: int) -> Path:
        """The run directory of stage `name` (``sft`` or ``pref``) in round `round_`."""
        return Path(self.output_dir, f"round-{round_}", name)

    def stage(self, name: str, round_: int) -> SFTConfig | PrefConfig:
        """The configuration of stage `name` in round `round_` (1-based)."""
        values = dict(PREF_DEFAULTS) if name == "pref" else {}
        values |= getattr(self, name)
        values["output_dir"] = str(self.run_dir(name, round_))
        if self.data:
            values["data"] = self.data
        if name == "pref":
            values["init"] = str(self.run_dir("sft", round_))
            values["negatives"] = "self"
            values["negatives_from"] = self._previous(round_)
        elif round_ > 1:
            values["model"] = str(self.run_dir("pref", round_ - 1))
            values["item_init"] = "default"  # the item tokens were trained in round 1
        elif self.model:
            values["model"] = self.model
        cls = SFTConfig if name == "sft" else PrefConfig
        try:
            return protocol.load_config(cls, name, None, values)
        except InputError as err:
            raise InputError(f"selfplay {name} section (round {round_}): {err}") from err

    def _previous(self, round_: int) -> str | None:
        """`negatives_from` of round `round_`'s preference stage (None: its `init`)."""
        if self.negatives_from == "sft":
            return None
        if round_ > 1:
            return str(self.run_dir("pref", round_ - 1))
        start = self.model or self.sft.get("model")
        return start if start and is_run_dir(start) else None


def stage_sections(config_file: str | Path) -> dict[str, dict[str, Any]]:
    """The ``sft`` and ``pref`` sections of a protocol file, paths resolved against its folder
    ({} for a flat file: it holds selfplay's own fields)."""
    raw = protocol.read_config_file(config_file)
    if not protocol.is_protocol(raw):
        return {}
    folder = Path(config_file).parent
    return {
        name: resolve_fields(protocol.read_stage(config_file, name), folder)
        for name in ("sft", "pref")
    }


def load_config(
    config_file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> SelfPlayConfig:
    """`SelfPlayConfig` from a file's ``selfplay`` section (or a flat file), its ``sft`` and
    ``pref`` sections as the stages' fields, and `overrides` over them (an override's ``sft``
    and ``pref`` mappings replace only the keys they name)."""
    values = dict(overrides or {})
    sections = stage_sections(config_file) if config_file else {}
    for name in ("sft", "pref"):
        given = values.get(name, {})
        if not isinstance(given, dict):
            raise InputError(f"{name} must be a mapping of field: value, got {given!r}")
        if name in sections or given:
            values[name] = {**sections.get(name, {}), **given}
    return protocol.load_config(SelfPlayConfig, "selfplay", config_file, values)


def write_record(config: SelfPlayConfig, completed: int) -> Path:
    """`OUT/selfplay.json` after `completed` rounds, written atomically."""
    out = Path(config.output_dir)
    start = config.model or config.sft.get("model", SFTConfig.model)
    record = {
        "setdpo_selfplay": RECORD_VERSION,
        "rounds": config.rounds,
        "start": stored(start, out, always=False),
        "completed": [
            {
                "round": r,
                "sft": config.run_dir("sft", r).relative_to(out).as_posix(),
                "pref": config.run_dir("pref", r).relative_to(out).as_posix(),
            }
            for r in range(1, completed + 1)
        ],
        "result": (
            config.run_dir("pref", completed).relative_to(out).as_posix()
            if completed == config.rounds
            else None
        ),
    }
    return atomic_write_json(out / RECORD_FILE, record)


def train_selfplay(config: SelfPlayConfig, resume: bool = False) -> Path:
    """Run every round (module docstring) and return the last round's preference run.

    `resume`: a stage whose run directory is finished (it has `setdpo_model.json`) is kept,
    an unfinished one continues from its last complete checkpoint; without it every stage
    trains from the start.
    """
    from setdpo.training.preference import train_pref
    from setdpo.training.sft import train_sft

    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    result = Path(config.output_dir)
    for round_ in range(1, config.rounds + 1):
        for name, train in (("sft", train_sft), ("pref", train_pref)):
            stage = config.stage(name, round_)
            result = Path(stage.output_dir)
            if resume and is_run_dir(result):  # `setdpo_model.json` is written last
                logger.info("self-play round %d: %s is finished, kept", round_, result)
                continue
            logger.info("self-play round %d of %d: %s into %s", round_, config.rounds, name, result)
            train(stage, resume=resume)
        write_record(config, round_)
    return result
