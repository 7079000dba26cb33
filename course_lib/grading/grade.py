"""One grade type, end to end: what ``check`` returns, what the results file holds, what the report shows.

A :class:`Grade` is the outcome of grading one exercise: its
:class:`Status`, the points it earned (all or nothing: ``max_points`` when
passed, else 0 -- computed here and nowhere else), the cases passed, the
messages shown to the learner, and the **seed** of the random cases, so that
``check(exercise_id, fn, seed=grade.seed)`` replays exactly the same cases.
``check`` prints :meth:`Grade.report`, the command-line grader reads the
JSON lines :meth:`Grade.to_json` wrote in the kernel back with
:meth:`Grade.from_json`, and the report serialises the same objects.
Introduced in chapter 00 (notebooks/00_orientation.ipynb).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Status(str, Enum):
    """How an exercise was graded (the value is what reports and JSON show)."""

    PASSED = "passed"                    # every case passed
    FAILED = "failed"                    # a wrong answer (or a forbidden shortcut)
    ERROR = "error"                      # the code raised, or could not be called
    TIMEOUT = "timeout"                  # a case ran past the time limit
    NOT_IMPLEMENTED = "not implemented"  # still the stub's NotImplementedError
    NOT_RUN = "not run"                  # command-line grader only: no check() ran

    def __str__(self) -> str:
        return self.value


@dataclass
class Grade:
    """The grade of one exercise (see the module docstring).

    Example:
        >>> g = Grade("00.parameter_bytes", Status.FAILED, max_points=1, passed_cases=1,
        ...           total_cases=8, messages=["expected 56, got 28"], seed=7)
        >>> g.points, Grade.from_json(g.to_json()) == g
        (0, True)
    """

    exercise: str
    status: Status
    max_points: int
    passed_cases: int = 0
    total_cases: int = 0
    messages: list[str] = field(default_factory=list)
    seed: int | None = None
    title: str = ""

    def __post_init__(self):
        self.status = Status(self.status)

    @property
    def points(self) -> int:
        """``max_points`` when passed, else 0."""
        return self.max_points if self.status is Status.PASSED else 0

    @property
    def passed(self) -> bool:
        return self.status is Status.PASSED

    def report(self) -> str:
        """The text ``check`` prints: a status line, then the messages."""
        head = (f"[{self.status.value.upper()}] {self.exercise}: {self.passed_cases}/{self.total_cases} "
                f"cases passed, {self.points}/{self.max_points} points")
        if self.seed is not None and not self.passed:
            head += f" (seed {self.seed}: check(..., seed={self.seed}) repeats these cases)"
        return "\n".join([head, *("  " + line for m in self.messages for line in m.splitlines())])

    def to_json(self) -> dict:
        return {"exercise": self.exercise, "title": self.title, "status": self.status.value,
                "points": self.points, "max_points": self.max_points,
                "passed_cases": self.passed_cases, "total_cases": self.total_cases,
                "messages": list(self.messages), "seed": self.seed}

    @classmethod
    def from_json(cls, data: dict) -> "Grade":
        """Rebuild a grade from :meth:`to_json` output (``points`` is derived, not read)."""
        return cls(exercise=str(data["exercise"]), status=Status(data["status"]),
                   max_points=int(data["max_points"]), passed_cases=int(data.get("passed_cases", 0)),
                   total_cases=int(data.get("total_cases", 0)),
                   messages=[str(m) for m in data.get("messages", [])], seed=data.get("seed"),
                   title=str(data.get("title", "")))

    def __str__(self) -> str:
        return self.report()

    def __repr__(self) -> str:
        return f"<Grade {self.exercise}: {self.status.value}, {self.points}/{self.max_points} points>"

    def _ipython_display_(self):
        # check() has already printed the report; showing it again when check(...)
        # is the last line of a cell would only repeat it. print(grade) shows it.
        pass
