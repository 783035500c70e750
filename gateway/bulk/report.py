"""The closing report of a bulk run, read back from the manifest.

Files and bytes in and out, the ratio per modality and per source transfer
syntax, the reasons files were passed through (grouped), and the failures.
Everything comes from the manifest rows of the run, so a resumed run reports
on the whole input, files done by earlier runs included.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from gateway.bulk.manifest import Manifest, path_of, printable
from gateway.logs import one_line

__all__ = ["Report", "Group", "build_report", "reason_group", "human_bytes"]

_LISTED_FAILURES = 20


def reason_group(reason: str) -> str:
    """A reason without its per-file details (numbers, parenthesised parts, nested ones whole), to group by.

    A number is a run of digits that does not follow a letter: those of a name ("htj2k",
    "jpeg2000", "int16") are part of it.
    """
    while True:  # the innermost parentheses first, until none is left
        shorter = re.sub(r"\s*\([^()]*\)", "", reason)
        if shorter == reason:
            return re.sub(r"(?<![A-Za-z0-9])\d+", "N", reason)
        reason = shorter


def human_bytes(count: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{int(count)} bytes"


@dataclass(frozen=True)
class Group:
    """Files and bytes of one modality or one source syntax (written outputs only)."""

    name: str
    files: int
    bytes_in: int
    bytes_out: int

    @property
    def ratio(self) -> float:
        return self.bytes_in / self.bytes_out if self.bytes_out else 0.0


@dataclass
class Report:
    counts: Counter = field(default_factory=Counter)  # outcome -> files
    earlier: int = 0  # done by an earlier run of the same output folder
    bytes_in: int = 0
    bytes_out: int = 0
    by_modality: list[Group] = field(default_factory=list)
    by_syntax: list[Group] = field(default_factory=list)
    passed: Counter = field(default_factory=Counter)  # grouped reason -> files
    skipped: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason), the first few
    seconds: float = 0.0
    workers: str | None = None  # what ran this run's files (None: nothing was left to do)

    @property
    def files(self) -> int:
        return sum(self.counts.values())

    def lines(self) -> list[str]:
        c = self.counts
        ratio = f"{self.bytes_in / self.bytes_out:.2f}" if self.bytes_out else "-"
        out = [f"{self.files} file(s) in {self.seconds:.1f} s: {c['recompressed']} recompressed, "
               f"{c['passed']} passed through (original copied), {c['skipped']} skipped, {c['failed']} failed"
               + (f"; {self.earlier} done by an earlier run" if self.earlier else ""),
               f"bytes: {human_bytes(self.bytes_in)} in, {human_bytes(self.bytes_out)} out, ratio {ratio}, "
               f"saved {human_bytes(max(0, self.bytes_in - self.bytes_out))}"]
        if self.workers:
            out.append(f"run on {self.workers}")
        for title, groups in (("modality", self.by_modality), ("source syntax", self.by_syntax)):
            if groups:
                width = max(len(title), *(len(g.name) for g in groups))
                out.append(f"  {title:<{width}}  {'files':>7}  {'in':>10}  {'out':>10}  ratio")
                out += [f"  {g.name:<{width}}  {g.files:>7}  {human_bytes(g.bytes_in):>10}  "
                        f"{human_bytes(g.bytes_out):>10}  {g.ratio:5.2f}" for g in groups]
        for title, groups in (("passed through, original copied", self.passed), ("skipped", self.skipped),
                              ("failed", self.failed)):
            if groups:
                out.append(f"{title}:")
                out += [f"  {count:>5}  {reason}" for reason, count in groups.most_common()]
        if self.failures:
            out.append("failures (first ones):")
            out += [f"  {rel}: {reason}" for rel, reason in self.failures]
        return [one_line(line) for line in out]  # names and reasons come from the files read


def _groups(manifest: Manifest, column: str) -> list[Group]:
    rows = manifest.rows(f"COALESCE({column}, '(none)'), COUNT(*), SUM(size), SUM(output_size)",
                         "outcome IN ('recompressed', 'passed') GROUP BY 1 ORDER BY SUM(size) DESC")
    return [Group(str(name), int(files), int(bytes_in or 0), int(bytes_out or 0))
            for name, files, bytes_in, bytes_out in rows]


def build_report(manifest: Manifest, seconds: float) -> Report:
    """The report of the manifest's current run."""
    from gateway.dicom.uids import TRANSFER_SYNTAXES

    report = Report(seconds=seconds, workers=manifest.run_workers())
    for outcome, files in manifest.rows("outcome, COUNT(*)", "outcome IS NOT NULL GROUP BY outcome"):
        report.counts[outcome] = files
    report.earlier = manifest.rows("COUNT(*)", "outcome IS NOT NULL AND run<?", (manifest.run_id,))[0][0]
    totals = manifest.rows("SUM(size), SUM(output_size)", "outcome IN ('recompressed', 'passed')")[0]
    report.bytes_in, report.bytes_out = int(totals[0] or 0), int(totals[1] or 0)
    report.by_modality = _groups(manifest, "modality")
    report.by_syntax = []
    for group in _groups(manifest, "source_syntax"):
        name = getattr(TRANSFER_SYNTAXES.get(group.name), "keyword", None) or group.name
        report.by_syntax.append(Group(name, group.files, group.bytes_in, group.bytes_out))
    for outcome, target in (("passed", report.passed), ("skipped", report.skipped), ("failed", report.failed)):
        for (reason,) in manifest.rows("reason", "outcome=?", (outcome,)):
            target[reason_group(reason or "")] += 1
    report.failures = [(printable(path_of(rel)), reason) for rel, reason in
                       manifest.rows("rel, reason", f"outcome='failed' ORDER BY rel LIMIT {_LISTED_FAILURES}")]
    return report
