"""k-anonymity over the released quasi-identifier columns: check, then fail or generalise."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bidsafe.config import schema_defaults
from bidsafe.errors import BidsafeError
from bidsafe.pseudonymise.columns import ColumnRule
from bidsafe.pseudonymise.metadata import MetadataTables, plain, release_value


@dataclass
class KAnonymityOutcome:
    """What the k-anonymity check found and did (sizes and generalised bins only, never raw values)."""

    k: int
    action: str
    quasi_identifiers: list[str]  # the released columns checked
    holds: bool = True
    participants: int = 0
    small_classes_before: list[int] = field(default_factory=list)  # sizes of classes below k, before generalising
    small_classes_after: list[int] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)  # what generalisation did, in order
    column_steps: dict[str, float] = field(default_factory=dict)  # generalised step per numeric column
    suppressed: list[str] = field(default_factory=list)  # columns removed from the release
    note: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "k": self.k, "action": self.action, "quasi_identifiers": self.quasi_identifiers, "holds": self.holds,
            "participants": self.participants, "small_classes_before": self.small_classes_before,
            "small_classes_after": self.small_classes_after, "steps": self.steps,
            "column_steps": self.column_steps, "suppressed": self.suppressed, "note": self.note,
        }


def equivalence_classes(tables: MetadataTables, columns: Sequence[ColumnRule],
                        steps: Mapping[str, float]) -> Counter[tuple[str, ...]]:
    """Class sizes (distinct participants) over the released, binned quasi-identifier values.

    Every released session row is a record an attacker can match: it carries the participant's columns
    (participants.tsv) and the session's (sessions.tsv; a column in both tables is taken per session, so every
    session's age is checked, not only the first). A participant counts once per class however many sessions
    fall into it.
    """
    members: dict[tuple[str, ...], set[str]] = {}
    for subject, participant_values in tables.participants.items():
        for session_values in (tables.sessions.get(subject) or {"": {}}).values():
            key = tuple(
                release_value(c, (session_values if c.in_sessions else participant_values).get(c.name),
                              steps.get(c.name))
                for c in columns
            )
            members.setdefault(key, set()).add(subject)
    return Counter({key: len(subjects) for key, subjects in members.items()})


def enforce_k_anonymity(tables: MetadataTables, *, k: int, action: str, quasi_identifiers: Sequence[str],
                        bins: Sequence[float] | None = None) -> KAnonymityOutcome:
    """Check k-anonymity over the released quasi-identifiers (see `equivalence_classes`); fail or generalise.

    `k`, `action` and `bins` are the validated `release.k_anonymity*` settings (the config schema constrains them;
    `bins` None: the schema's default). Generalising coarsens every numeric quasi-identifier one step at a time
    (precision x 5, 10, 20, 50), then suppresses numeric ones, then categorical ones (last listed first). With no
    quasi-identifier left, nothing is left to link on, so the check holds whatever the number of participants:
    the loop always ends.
    """
    if bins is None:
        bins = schema_defaults("release")["k_anonymity_bins"]
    by_name = {r.name: r for r in tables.rules}
    qis = [by_name[name] for name in quasi_identifiers if name in by_name]
    outcome = KAnonymityOutcome(k=k, action=action, quasi_identifiers=[q.name for q in qis],
                                participants=len(tables.participants))
    steps: dict[str, float] = {q.name: float(q.precision or 1.0) for q in qis if q.kind == "numeric"}
    ladders = {q.name: [steps[q.name] * m for m in bins if steps[q.name] * m > steps[q.name]]
               for q in qis if q.kind == "numeric"}
    active = list(qis)
    first = True
    while True:
        small = _small_classes(tables, active, steps, outcome)
        if first:
            outcome.small_classes_before = small
            first = False
        if not small:
            outcome.holds = True
            outcome.small_classes_after = []
            break
        if action == "fail":
            outcome.holds = False
            outcome.small_classes_after = small
            raise _failure(tables, active, steps, k, small)
        _generalise_once(active, steps, ladders, outcome)
    outcome.column_steps = {name: step for name, step in steps.items() if name not in outcome.suppressed
                            and step != float(by_name[name].precision or 1.0)}
    return outcome


def _small_classes(tables: MetadataTables, active: Sequence[ColumnRule], steps: Mapping[str, float],
                   outcome: KAnonymityOutcome) -> list[int]:
    """Sizes of the classes below k (none when no quasi-identifier is left: nothing to link on)."""
    k = outcome.k
    if not active:
        if outcome.participants and outcome.participants < k:
            outcome.note = "no quasi-identifier column is released, so no participant can be singled out by one"
        return []
    classes = equivalence_classes(tables, active, steps)
    return sorted(size for size in classes.values() if size < k)


def _failure(tables: MetadataTables, active: Sequence[ColumnRule], steps: Mapping[str, float], k: int,
             small: Sequence[int]) -> BidsafeError:
    classes = equivalence_classes(tables, active, steps)
    listing = "; ".join(f"({', '.join(key)}): {size}" for key, size in sorted(classes.items()) if size < k)
    return BidsafeError(
        f"k-anonymity: {len(small)} equivalence class(es) of ({', '.join(q.name for q in active)}) hold "
        f"fewer than k={k} participants [{listing}]; set release.k_anonymity_action: generalise, lower "
        "release.k_anonymity, or release fewer quasi-identifier columns"
    )


def _generalise_once(active: list[ColumnRule], steps: dict[str, float], ladders: dict[str, list[float]],
                     outcome: KAnonymityOutcome) -> None:
    """One generalisation step: every numeric column one bin coarser (or suppressed), else drop a categorical."""
    numeric = [q for q in active if q.kind == "numeric"]
    if not numeric:
        q = active.pop()
        outcome.suppressed.append(q.name)
        outcome.steps.append(f"{q.name}: suppressed")
        return
    for q in numeric:
        if ladders[q.name]:
            steps[q.name] = ladders[q.name].pop(0)
            outcome.steps.append(f"{q.name}: bins of {plain(steps[q.name])} {q.unit or ''}".rstrip())
        else:
            active.remove(q)
            outcome.suppressed.append(q.name)
            outcome.steps.append(f"{q.name}: suppressed")
