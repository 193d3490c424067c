"""API keys: read from a file or an environment variable, never logged, cached or written."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tuna.errors import TunaError

log = logging.getLogger(__name__)


def read_api_key(api_key_env: str = "OPENAI_API_KEY", api_key_file: str | os.PathLike | None = None) -> str | None:
    """The API key: the first non-empty line of ``api_key_file`` when one is given, else the environment variable
    ``api_key_env`` (None when unset). The value is never logged, cached or written anywhere; errors name the file
    or the variable, never the value."""
    if api_key_file:
        p = Path(api_key_file).expanduser()
        if not p.is_file():
            raise TunaError("API key file does not exist", path=p, field="api_key_file")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:  # the message would quote bytes of the key: name the error only
            raise TunaError(f"cannot read the API key file ({type(e).__name__})", path=p, field="api_key_file") from None
        key = next((line.strip() for line in text.splitlines() if line.strip()), "")
        if not key:
            raise TunaError("API key file is empty", path=p, field="api_key_file")
        if os.name == "posix" and p.stat().st_mode & 0o077:
            log.warning("API key file %s can be read by other users (chmod 600 it)", p)
        return key
    return os.environ.get(api_key_env) or None
