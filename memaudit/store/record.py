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

    @property
    def completion(self) -> str | None:
        return None if self.prompt is None else self.text[len(self.prompt) :]
