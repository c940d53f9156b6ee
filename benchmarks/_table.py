"""One results table, printed as aligned text for the terminal and as Markdown for the README."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    """A titled table: a header row, rows of already-formatted cells, and notes printed under it.

    Example:
        >>> table = Table("Start-up", ["command", "median s"], [["plkit --help", "0.21"]])
        >>> print(table.text())
        Start-up
          command       median s
          plkit --help  0.21
    """

    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        widths = [max(len(row[i]) for row in [self.header, *self.rows]) for i in range(len(self.header))]
        lines = [self.title]
        for row in [self.header, *self.rows]:
            lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.header) + " |"]
        lines.append("|" + "|".join(" --- " for _ in self.header) + "|")
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in self.rows]
        for note in self.notes:
            lines += ["", note]
        return "\n".join(lines)


def verdict(ok: bool) -> str:
    """``PASS`` or ``MISS``: whether a goal was met in this run (machines are noisy; read it with the numbers)."""
    return "PASS" if ok else "MISS"


def ratio(value: float) -> str:
    """``1.03x``."""
    return f"{value:.2f}x"
