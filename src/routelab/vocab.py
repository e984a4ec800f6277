"""The word lists a prompt set or a generated corpus is built from.

One structure, two vocabularies: real English (routelab.prompts) for real models and the
testbed's own words (routelab.testbed) so that the testbed sees in-distribution prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

# The nine demographic axes of FARE (docs/method.md §1), in a fixed order.
AXES: tuple[str, ...] = (
    "gender",
    "race",
    "religion",
    "nationality",
    "age",
    "sexuality",
    "disability",
    "socioeconomic",
    "political",
)


@dataclass(frozen=True)
class Vocabulary:
    """Descriptors per axis, professions and sentence templates.

    A template holds one ``{person}`` slot: the neutral prompt fills it with a profession
    ("the doctor carefully examined the patient"), a demographic variant with
    "<descriptor> <profession>" ("the female doctor carefully examined the patient").
    """

    axes: dict[str, tuple[str, ...]]  # axis -> descriptors (the groups of that axis)
    professions: tuple[str, ...]
    templates: tuple[str, ...]

    def __post_init__(self) -> None:
        unknown = set(self.axes) - set(AXES)
        if unknown:
            raise ValueError(f"unknown axes {sorted(unknown)}; known: {AXES}")
        for t in self.templates:
            if t.count("{person}") != 1:
                raise ValueError(f"template must hold exactly one {{person}} slot: {t!r}")

    def person(self, profession: str, descriptor: str | None = None) -> str:
        return profession if descriptor is None else f"{descriptor} {profession}"
