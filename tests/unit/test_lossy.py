"""The lossy '¿': repaired only where the answer is certain."""

from __future__ import annotations

import pytest

from src.data.lossy import repair_lossy


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("l¿encre", "l'encre"),
        ("d¿été", "d'été"),
        ("aujourd¿hui", "aujourd'hui"),
        ("s¿est", "s'est"),
        ("S¿il vous plaît", "S'il vous plaît"),
        ("qu¿il", "qu'il"),
        ("c¿ur", "cœur"),
        ("¿uvre", "œuvre"),
        ("man¿uvrer", "manœuvrer"),
        ("v¿ux", "vœux"),
        ("n¿uds", "nœuds"),
        ("¿il", "œil"),
        ("r¿¿sistants", "résistants"),
        ("Caract¿¿ristiques:", "Caractéristiques:"),
        ("qualit¿¿.", "qualité."),
        ("¿¿ installer", "à installer"),
        ("t¿¿l¿¿phone", "téléphone"),
        ("R¿¿SISTANT", "RÉSISTANT"),
        ("dâ¿¿hygiène", "d'hygiène"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_certain_repairs(raw: str, expected: str) -> None:
    fixed, repaired = repair_lossy(raw)
    assert fixed == expected
    assert repaired == raw.count("¿")


@pytest.mark.parametrize(
    "raw",
    [
        "l¿Oréal",  # 'oréal' is no French word: no guess
        "Crois¿E",  # a single ¿ for a lost 'é' is ambiguous
        "arr¿ºt",  # not a known loss pattern
        "¿",  # nothing around it
        "x¿¿y",  # no accented letter makes a word
    ],
)
def test_uncertain_left_alone(raw: str) -> None:
    assert repair_lossy(raw) == (raw, 0)


def test_text_without_lossy_is_untouched() -> None:
    text = "Ceci n'a rien à réparer."
    assert repair_lossy(text) == (text, 0)
