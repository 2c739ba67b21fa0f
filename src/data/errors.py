"""Input errors a user can act on, each in one line (shared by the readers)."""

from __future__ import annotations

# After a message about a row: the usual cause of a ragged or endless row.
LIMIT_HINT = "; a quoted field may be unterminated"


class InputError(ValueError):
    """Bad input, explained in one line a user can act on."""


def not_valid_text(encoding: str) -> InputError:
    if encoding != "utf-8":  # cp1252 leaves five bytes undefined; latin-1 takes any byte
        return InputError(
            f"input is not valid {encoding} text; "
            "use encoding 'latin-1' (clean-data --encoding latin-1)"
        )
    return InputError(
        f"input is not valid {encoding} text; if it is a Windows file, "
        "use encoding 'cp1252' (clean-data --encoding cp1252)"
    )


def ragged_row(expected: int, fields: list[str]) -> InputError:
    begins = ",".join(fields).splitlines()[0][:60] if any(fields) else ""
    return InputError(
        f"ragged row: expected {expected} fields, got {len(fields)} (row begins {begins!r})"
        + LIMIT_HINT
    )
