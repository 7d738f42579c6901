"""The cluster's health as this node sees it, in words (pure): the members view, the summary
line, the readiness badge and errors a reader can act on. The status page renders what these
return; nothing here knows about markup.

The members come from the status' "members" (each alive / suspect / failed / left) and its
"summary" when it has them. From a status without them a view is derived: listed peers are
alive, rejoin candidates that were tried in vain are failed. The node itself is a member that
is up; a member that left is not counted as missing.

The badge is this node's readiness, but never green while a member is suspect or failed: amber
then, and saying so ("ready, 1 member failed"); red when this node is not ready.
"""

from __future__ import annotations

from dcounter.errors import failure_words

STATES = ("alive", "suspect", "failed", "left")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def describe_error(text, peer: str | None = None) -> str:
    """An error for a reader: an exception class name in words (`errors.failure_words`), without
    the peer's id when the row already names it."""
    if not text:
        return ""
    prefix, words = failure_words(str(text))
    return words if prefix is None or prefix == peer else f"{prefix}: {words}"


def members_view(status: dict) -> list[dict]:
    """The members this node knows, sorted by id: state, last heard (seconds, or None:
    never, or not known when `heard_known` is False), caught_up (True, False or None), backlog
    and error. From the status' "members" when it has
    them; else derived: listed peers are alive, candidates that were tried and failed are
    failed."""
    links = status.get("replication") or {}
    members = status.get("members")
    view = []
    if isinstance(members, dict):
        for member_id in sorted(members):
            info = members[member_id] if isinstance(members[member_id], dict) else {}
            state = info.get("state")
            view.append({
                "id": member_id,
                "state": state if state in STATES else "failed",
                "last_heard": info.get("last_heard_seconds"),
                "caught_up": info.get("caught_up"),
                "backlog": info.get("backlog", links.get(member_id, {}).get("backlog", 0)),
                "error": describe_error(info.get("error"), member_id),
            })
        return view
    peers = status.get("peers") or {}
    candidates = status.get("candidates") or {}
    for member_id in sorted(peers):
        view.append({"id": member_id, "state": "alive",
                     "last_heard": peers[member_id].get("last_seen_seconds"),
                     "caught_up": None,
                     "backlog": links.get(member_id, {}).get("backlog", 0), "error": ""})
    for member_id in sorted(candidates):
        info = candidates[member_id]
        if member_id in peers or not (info.get("attempts") or info.get("last_error")):
            continue  # not tried yet: nothing known against it
        view.append({"id": member_id, "state": "failed", "last_heard": None,
                     "heard_known": False, "caught_up": None, "backlog": links.get(member_id, {}).get("backlog", 0),
                     "error": describe_error(info.get("last_error"), member_id)})
    view.sort(key=lambda member: member["id"])
    return view


def _counts(members: list[dict]) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for member in members:
        counts[member["state"]] += 1
    return counts


def summary(status: dict, members: list[dict]) -> str:
    """The status' own summary line when it has one; else the same words derived here. The
    node itself counts as a member that is up, and so does a suspect member (still listed,
    only late)."""
    text = status.get("summary")
    if isinstance(text, str) and text:
        return text
    counts = _counts(members)
    total = 1 + len(members) - counts["left"]
    parts = [f"{1 + counts['alive'] + counts['suspect']} of {total} members up"]
    parts += [f"{counts[state]} {state}" for state in ("suspect", "failed") if counts[state]]
    behind = sum(1 for m in members
                 if m["state"] in ("alive", "suspect") and m["caught_up"] is False)
    if behind:
        parts.append(f"{behind} behind")
    elif not counts["suspect"] and not counts["failed"]:
        parts.append("all caught up")
    return ", ".join(parts)


def summary_tone(members: list[dict]) -> str:
    """ok (green), warn (amber) or bad (red): a failed member is red, a suspect one amber."""
    counts = _counts(members)
    if counts["failed"]:
        return "bad"
    if counts["suspect"]:
        return "warn"
    return "ok"


def badge(status: dict, members: list[dict]) -> tuple[str, str, str]:
    """(tone, text, reason) of the readiness badge. This node may be ready while a member is
    down: then it is amber and says so, never green."""
    ready = status.get("ready") or {}
    reason = str(ready.get("reason", ""))
    if not ready.get("ready"):
        return "bad", "not ready", reason
    counts = _counts(members)
    troubles = [(counts[state], state) for state in ("failed", "suspect") if counts[state]]
    if troubles:
        (number, state), *rest = troubles
        words = [f"ready, {_plural(number, 'member')} {state}"]
        words += [f"{n} {s}" for n, s in rest]
        return "warn", ", ".join(words), reason
    return "ok", "ready", reason
