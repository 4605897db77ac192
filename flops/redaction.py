"""Credentials in source URLs: taken out before a URL is recorded anywhere, handed to git outside argv."""

from __future__ import annotations

import base64
import re
from urllib.parse import unquote, urlsplit, urlunsplit

# scheme://userinfo@ anywhere in a text (messages, logs): the userinfo is what must not be recorded.
_USERINFO_IN_TEXT = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s@]+)@")
# Where a user name alone is an identity, not a secret (ssh://git@host); anywhere else it may be a token.
_USER_IS_IDENTITY = ("ssh", "git+ssh", "ssh+git")


def redact_url(url: str) -> str:
    """URL without its secret part: https://user:token@host/r.git -> https://host/r.git; ssh://git@h keeps git."""
    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url  # a path, or scp-like git@host:repo (an ssh user name, no secret)
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, has_password, _ = userinfo.partition(":")
    kept = user if parts.scheme in _USER_IS_IDENTITY and not has_password else ""
    return urlunsplit(parts._replace(netloc=f"{kept}@{host}" if kept else host))


def redact_text(text: str) -> str:
    """Every scheme://user:secret@ in TEXT with its userinfo removed (for messages and logs)."""
    def strip(match: re.Match[str]) -> str:
        scheme, userinfo = match.group("scheme"), match.group("userinfo")
        keep = scheme[:-3].lower() in _USER_IS_IDENTITY and ":" not in userinfo
        return match.group(0) if keep else scheme

    return _USERINFO_IN_TEXT.sub(strip, text)


def git_credentials(url: str) -> tuple[str, dict[str, str]]:
    """The URL to give git, and environment for git carrying the URL's credentials (never argv, never a
    file: git's own config-from-environment, read by this git process only)."""
    parts = urlsplit(url)
    clean = redact_url(url)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return clean, {}
    user, _, password = parts.netloc.rsplit("@", 1)[0].partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return clean, {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
                   "GIT_CONFIG_VALUE_0": f"Authorization: Basic {token}"}
