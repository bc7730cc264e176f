"""The redaction function: registered secrets, credential shapes, key names and events."""

from __future__ import annotations

import secrets

import pytest

from ledgerflow.events import MASK, NodeAttemptFailed, redact, redact_event, redact_text, register_secret

GITHUB = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
SLACK = "xoxb-1234567890-0987654321-abcdefABCDEF"
AWS = "AKIAIOSFODNN7EXAMPLE"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
       "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U")


@pytest.mark.parametrize(("text", "secret"), [
    (f"token {GITHUB} rejected", GITHUB),
    (f"slack said no to {SLACK}", SLACK),
    (f"key id {AWS} unknown", AWS),
    (f"Authorization: Bearer {JWT}", JWT),
    ("header Bearer abc.def-ghi_jkl", "abc.def-ghi_jkl"),
    (f"cookie {JWT}", JWT),
    ("connect postgresql://app:s3cr3t-pw@127.0.0.1:5432/db failed", "s3cr3t-pw"),
    ("host=db password=hunter2-xyz user=app", "hunter2-xyz"),
    ('{"api_key": "k-123456789"}', "k-123456789"),
])
def test_redact_text_masks_known_shapes(text, secret):
    masked = redact_text(text)

    assert secret not in masked
    assert MASK in masked


def test_redact_keeps_url_user_and_host():
    assert redact_text("postgresql://app:pw-123456@db.local/x") == f"postgresql://app:{MASK}@db.local/x"


def test_redact_text_keeps_plain_text():
    text = "node 'cleaned' partition 3 failed after 2 attempt(s): division by zero; sha256 " + "ab" * 32

    assert redact_text(text) == text


def test_registered_secret_masked_anywhere():
    value = "plain-" + secrets.token_hex(8)
    register_secret(value)

    assert redact_text(f"prefix{value}suffix") == f"prefix{MASK}suffix"


def test_short_registered_value_ignored():
    register_secret("abc")

    assert redact_text("abcdef") == "abcdef"


def test_redact_mapping_masks_credential_keys():
    settings = {"command": "mcp-server", "env": {"GITHUB_TOKEN": "anything-at-all", "PATH": "/usr/bin"},
                "headers": {"Authorization": "Token 1234567", "Accept": "application/json"}, "max_tokens": 5}

    masked = redact(settings)

    assert masked["env"] == {"GITHUB_TOKEN": MASK, "PATH": "/usr/bin"}
    assert masked["headers"] == {"Authorization": MASK, "Accept": "application/json"}
    assert masked["max_tokens"] == 5
    assert masked["command"] == "mcp-server"


def test_redact_event_masks_message():
    event = NodeAttemptFailed(node="n", partition=None, attempt=1, error_type="RuntimeError",
                              message=f"login with {GITHUB} failed")

    masked = redact_event(event)

    assert GITHUB not in masked.message
    assert masked.node == "n"


def test_redact_event_returns_clean_event_itself():
    event = NodeAttemptFailed(node="n", partition=None, attempt=1, error_type="RuntimeError", message="boom")

    assert redact_event(event) is event


@pytest.mark.parametrize("text", [
    "/work/tests/actors/pipelines/secrets.py:pipeline",
    "mypackage.tokens:pipeline",
    "https://example.org/password-reset",
    "node 'tokenize' partition 3",
])
def test_redact_text_keeps_locators(text):
    assert redact_text(text) == text


def test_redact_mapping_keeps_reference_keys():
    params = {"token_file": "/run/secrets/token", "password_env": "DB_PASSWORD", "token": "abcdefgh"}

    assert redact(params) == {"token_file": "/run/secrets/token", "password_env": "DB_PASSWORD", "token": MASK}
