"""Text at the boundaries: what may enter (printable, valid UTF-8) and how it is cut to fit
the region's fixed fields (whole characters only, as ``onvm_set_text`` does in C)."""

from __future__ import annotations

from onvm.errors import ConfigError

__all__ = ["check_text", "fit_text"]


def check_text(text: str, what: str, limit: int = 256) -> None:
    """Printable text of at most ``limit`` characters that UTF-8 can carry (no lone
    surrogates); ConfigError naming ``what`` otherwise."""
    if not text.isprintable() or len(text) > limit:
        raise ConfigError(f"{what} {text[:64]!r}: expected printable text of at most {limit} characters")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ConfigError(f"{what} {text[:64]!r}: not valid text (a lone surrogate)") from None


def fit_text(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, on a character boundary."""
    return text.encode(errors="replace")[:limit].decode(errors="ignore")
