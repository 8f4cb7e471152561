"""What "inert" means for outside text in a Discord message (audit issue 8, item 4)."""

from __future__ import annotations

import re

EVIL = "[click](https://evil.example/x) @everyone @here <@123> <@&456> `code` ```block``` **b**\nnext line"

_MASKED_LINK = re.compile(r"(?<!\\)\[[^\]\n]*(?<!\\)\]\(")  # [text]( with neither bracket escaped
_MENTION = re.compile(r"<@[!&]?\d+>")
_RAW_AT = re.compile(r"@(everyone|here)")
_BACKTICK = re.compile(r"(?<!\\)`")


def assert_inert(text: str, *, one_line: bool = True) -> None:
    """No clickable masked link, no user/role mention, no live @everyone/@here, no unescaped
    backtick (which could open or close a code span), and (when ``one_line``) no newline."""
    assert not _MASKED_LINK.search(text), text
    assert not _MENTION.search(text), text
    assert not _RAW_AT.search(text), text
    assert not _BACKTICK.search(text), text
    if one_line:
        assert "\n" not in text, text
