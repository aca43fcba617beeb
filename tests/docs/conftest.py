"""The README's examples run with a private runtime directory (see tests/docs/shell.py)."""

from tests.integration.conftest import runtime  # noqa: F401  (a fixture used here)
