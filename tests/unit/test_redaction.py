"""Source URLs lose their credentials before they are recorded; git gets them through its environment."""

from __future__ import annotations

import base64

import pytest

from flops.redaction import git_credentials, redact_text, redact_url


@pytest.mark.parametrize(("url", "recorded"), [
    ("https://user:tok3n@git.example.org/team/wine.git", "https://git.example.org/team/wine.git"),
    ("https://tok3n@git.example.org:8443/wine.git", "https://git.example.org:8443/wine.git"),
    ("http://u:t@127.0.0.1:8000/a.git", "http://127.0.0.1:8000/a.git"),
    ("file://u:tok3n@/srv/a.git", "file:///srv/a.git"),
    ("ssh://git:tok3n@host/a.git", "ssh://host/a.git"),
    ("ssh://git@host/a.git", "ssh://git@host/a.git"),  # a user name alone is an identity, not a secret
    ("git@host:team/a.git", "git@host:team/a.git"),
    ("/home/me/repo", "/home/me/repo"),
])
def test_redact_url_drops_secrets_and_keeps_the_rest(url: str, recorded: str) -> None:
    assert redact_url(url) == recorded


def test_redact_text_strips_userinfo_in_messages() -> None:
    text = "git fetch of https://u:tok3n@h/r.git failed; see ssh://git@h/x"
    assert redact_text(text) == "git fetch of https://h/r.git failed; see ssh://git@h/x"


def test_git_gets_http_credentials_as_a_header_in_its_environment() -> None:
    url, env = git_credentials("https://me:s%40cret@h.org/r.git")
    assert url == "https://h.org/r.git"
    header = env["GIT_CONFIG_VALUE_0"]
    assert env["GIT_CONFIG_KEY_0"] == "http.extraHeader" and env["GIT_CONFIG_COUNT"] == "1"
    assert base64.b64decode(header.removeprefix("Authorization: Basic ")) == b"me:s@cret"
    assert git_credentials("git@h:o/r.git") == ("git@h:o/r.git", {})
