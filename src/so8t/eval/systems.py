"""The systems `so8t eval` puts side by side, behind one small interface (`System`): the trained
gate, the baselines (keywords, probe, judge), the fine-tuned LM's own tag, and other trained runs.

Every system gives N x 3 probabilities (ALLOW, ESCALATE, REFUSE) for a list of records, and the
thresholds that turn them into actions (None: argmax), so every KPI, the binary view and the
per-group breakdowns come from the same functions for each of them. A compared run is scored
up front, one run at a time (only one extra model is ever in memory), and stands in as a
`Scored` system holding its probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from so8t.config import TrainConfig
from so8t.data import DataError, Record, assemble
from so8t.eval import baselines as bl
from so8t.eval.datasets import Dataset
from so8t.eval.phases import Phases
from so8t.eval.taskhead import lm_tag_probs
from so8t.model import LoadedRun, Run
from so8t.model.thresholds import Thresholds

BASELINES = ("keywords", "probe", "judge")
Hook = Callable[[], None] | None


class System(Protocol):
    """A compared system: its row name, its decision thresholds (None: argmax), how to announce a
    pass over n prompts (None: too quick to announce) and its probabilities."""

    name: str
    thresholds: Thresholds | None
    batch_size: int

    def what(self, n: int) -> str | None: ...

    def probs(self, records: Sequence[Record], between_batches: Hook = None) -> np.ndarray: ...


@dataclass
class Gate:
    """The trained gate: the run's head, decided by its thresholds (or argmax)."""

    loaded: LoadedRun
    thresholds: Thresholds | None
    name: str = "gate"
    batch_size: int = 16

    def what(self, n: int) -> str | None:
        return f"scoring {n} prompts with the gate"

    def probs(self, records: Sequence[Record], between_batches: Hook = None) -> np.ndarray:
        return self.loaded.probs(records, between_batches=between_batches)


@dataclass
class Keywords:
    """The bilingual alarm-word list."""

    name: str = "keywords"
    thresholds: Thresholds | None = None
    batch_size: int = 16

    def what(self, n: int) -> str | None:
        return None

    def probs(self, records: Sequence[Record], between_batches: Hook = None) -> np.ndarray:
        return bl.keyword_probs(records)


@dataclass
class Probe:
    """Logistic regression on the frozen base model's pooled features."""

    loaded: LoadedRun
    clf: Any
    name: str = "probe"
    thresholds: Thresholds | None = None
    batch_size: int = 16

    def what(self, n: int) -> str | None:
        return f"probe baseline on {n} prompts"

    def probs(self, records: Sequence[Record], between_batches: Hook = None) -> np.ndarray:
        return bl.probe_probs(self.clf, bl.base_features(self.loaded, records, between_batches=between_batches))


@dataclass
class Judge:
    """The base LLM asked zero-shot with a policy prompt."""

    loaded: LoadedRun
    name: str = "judge"
    thresholds: Thresholds | None = None
    batch_size: int = 8

    def what(self, n: int) -> str | None:
        return f"zero-shot judge baseline on {n} prompts (base LLM, policy prompt)"

    def probs(self, records: Sequence[Record], between_batches: Hook = None) -> np.ndarray:
        return bl.judge_probs(self.loaded, records, between_batches=between_batches)


@dataclass
class LmTag:
    """The fine-tuned LM's own action tag after the prompt."""

    loaded: LoadedRun
    name: str = "lm_tag"
    thresholds: Thresholds | None = None
    batch_size: int = 8

    def what(self, n: int) -> str | None:
        return f"the fine-tuned LM's own action tag on {n} prompts"

    def probs(self, records: Sequence[Record], between_batches: Hook = None) -> np.ndarray:
        return lm_tag_probs(self.loaded, records, between_batches=between_batches)


@dataclass
class Scored:
    """A system already scored on one dataset (a compared run): its probabilities for exactly
    those records."""

    name: str
    scores: np.ndarray
    thresholds: Thresholds | None
    batch_size: int = 16

    def what(self, n: int) -> str | None:
        return None

    def probs(self, records: Sequence[Record], between_batches: Hook = None) -> np.ndarray:
        if len(records) != len(self.scores):
            raise ValueError(f"{self.name} was scored on {len(self.scores)} prompts, asked for {len(records)}")
        return self.scores


def score(system: System, prefix: str, records: Sequence[Record], phases: Phases) -> np.ndarray:
    """The system's probabilities, the pass announced as 'PREFIX: what' when it is worth it."""
    n = len(records)
    what = system.what(n)
    if what is None:
        return system.probs(records)
    with phases.phase(f"{prefix}: {what}", total=n, batch_size=system.batch_size) as tick:
        return system.probs(records, between_batches=tick)


def baseline_systems(names: Sequence[str], loaded: LoadedRun, probe: Probe | None) -> list[System]:
    """The chosen baselines that can run (the probe only when it was trained), then the LM tag."""
    systems: list[System] = []
    if "keywords" in names:
        systems.append(Keywords())
    if "probe" in names and probe is not None:
        systems.append(probe)
    if "judge" in names:
        systems.append(Judge(loaded))
    return [*systems, LmTag(loaded)]


def train_probe(loaded: LoadedRun, cfg: TrainConfig, train_max: int, phases: Phases) -> Probe | None:
    """The probe fitted on a class-balanced sample of the run's own training split; None (with a
    logged reason) when that split cannot be rebuilt."""
    try:
        mix = assemble(cfg.data, cfg.dev_data, cfg.test_data, seed=cfg.seed, source_weights=cfg.source_weights)
    except (OSError, DataError, ValueError) as exc:
        phases.log(f"probe baseline skipped: cannot rebuild the run's training data ({exc})")
        return None
    sample = balanced_sample(mix.train, train_max, cfg.seed)
    with phases.phase(
        f"probe baseline: base-model features of {len(sample)} training prompts", total=len(sample)
    ) as tick:
        feats = bl.base_features(loaded, sample, between_batches=tick)
    with phases.phase("probe baseline: fitting the logistic regression"):
        return Probe(loaded, bl.fit_probe(feats, [int(r.required_label()) for r in sample], cfg.seed))


def balanced_sample(records: list[Record], k: int, seed: int = 0) -> list[Record]:
    """About k records, the same number from each label (fewer where a label has fewer)."""
    rng = np.random.default_rng(seed)
    by: dict[int, list[Record]] = {}
    for r in records:
        by.setdefault(int(r.required_label()), []).append(r)
    per = max(1, k // max(1, len(by)))
    out: list[Record] = []
    for c in sorted(by):
        idx = rng.permutation(len(by[c]))[:per]
        out.extend(by[c][i] for i in idx)
    return out


def score_compared_runs(runs: Sequence[str], datasets: list[Dataset], phases: Phases) -> dict[str, list[Scored]]:
    """{dataset name: [a 'run:<name>' system per other run]} for each labelled dataset, scored one
    run at a time so only one extra model is in memory."""
    out: dict[str, list[Scored]] = {}
    for given in runs:
        run = Run(given)
        name = run.folder.name
        with phases.phase(f"comparing with run {run.folder}: loading"):
            loaded = run.load()
            thr = run.thresholds()
        for ds in datasets:
            if ds.labelled:
                with phases.phase(
                    f"run {name}: scoring {len(ds.records)} prompts of {ds.name}", total=len(ds.records)
                ) as tick:
                    probs = loaded.probs(ds.records, between_batches=tick)
                out.setdefault(ds.name, []).append(Scored(f"run:{name}", probs, thr))
        del loaded
    return out
