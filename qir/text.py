"""Text that needs no download: the English prose of Python's own `pydoc_data.topics`."""
from __future__ import annotations

import re
from pathlib import Path

from qir.errors import QirError


def pydoc_text() -> str:
    """~230k characters of English prose that ships with every Python."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[key] for key in sorted(topics))


def load_text(source: str = "pydoc") -> str:
    """`pydoc` for the built-in text, otherwise a path to a UTF-8 text file."""
    if source == "pydoc":
        return pydoc_text()
    path = Path(source)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QirError(f"text file not found: {source}") from None
    except UnicodeDecodeError:
        raise QirError(f"{source} is not UTF-8 text") from None


def sentences(count: int, min_words: int = 6, max_words: int = 40, skip: int = 0) -> list[str]:
    """`count` distinct prose sentences from the pydoc text (no code lines), in a fixed order,
    after the first `skip` ones (calibration skips past those evaluation uses)."""
    found, seen, skipped = [], set(), 0
    for paragraph in pydoc_text().split("\n\n"):
        if paragraph.startswith((" ", "\t")) or ">>>" in paragraph:
            continue  # code examples and indented blocks are not prose
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(paragraph.split())):
            words = sentence.split()
            if min_words <= len(words) <= max_words and sentence[0].isupper() and sentence not in seen:
                seen.add(sentence)
                if skipped < skip:
                    skipped += 1
                    continue
                found.append(sentence)
                if len(found) == count:
                    return found
    raise QirError(f"the pydoc text has only {len(found)} sentences of {min_words}-{max_words} words")
