"""Turning what a person pastes (an invite link or a bare node id) into a contact."""

from __future__ import annotations

import re

from p2pmsg.endpoint import Invite
from p2pmsg.errors import BadInvite
from p2pmsg.store import Contact

MAX_NAME = 64
_NODE_ID = re.compile(r"[0-9a-f]{64}")


def check_name(name: str) -> str:
    """A contact name: 1-64 printable characters, no surrounding space."""
    if not 0 < len(name) <= MAX_NAME or not name.isprintable() or name != name.strip():
        raise BadInvite(f"contact names are 1-{MAX_NAME} printable characters")
    return name


def contact_from_text(name: str, text: str, now: float) -> Contact:
    """Raises :class:`BadInvite` for text that is neither a link nor a node id."""
    check_name(name)
    text = text.strip()
    if _NODE_ID.fullmatch(text.lower()):
        return Contact(name, bytes.fromhex(text), None, (), now)
    invite = Invite.parse(text)
    return Contact(
        name,
        invite.identity.node_id,
        invite.identity.key,
        tuple(str(e) for e in invite.endpoints),
        now,
    )
