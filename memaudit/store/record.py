"""One record as the run directory stores it (``records.jsonl``): the contract every later
stage reads. memaudit.data.records makes these from the user's files."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Record:
    index: int
    id: str
    text: str
    prompt: str | None  # None: plain text, the whole record is scored and continued
    group: str | None  # planted near-duplicate group, when the data carries one
    line: int
    # Chat records with more than one assistant turn: the [start, end) character spans of the
    # assistant turns before the completion, scored with --loss-on completion as the
    # completion is. None otherwise, and then not stored (records.jsonl as before).
    loss_spans: list[list[int]] | None = None

    @property
    def completion(self) -> str | None:
        return None if self.prompt is None else self.text[len(self.prompt) :]

    def to_dict(self) -> dict:
        """The record as records.jsonl stores it (no loss_spans key where there are none)."""
        from dataclasses import asdict

        d = asdict(self)
        if d["loss_spans"] is None:
            del d["loss_spans"]
        return d
