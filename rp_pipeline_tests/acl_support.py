"""The README's security lines, applied as written: Redis ACL users made from its `ACL SETUSER` lines."""

from __future__ import annotations

import re
import shlex
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from .cli_support import REPO

README = (REPO / "README.md").read_text()


def readme_acl_line(user: str, first_rule: str) -> str:
    """The README's `ACL SETUSER <user> <first_rule> ...` line, exactly one, as written."""
    lines = [
        line for line in README.splitlines() if line.startswith(f"ACL SETUSER {user} {first_rule} ")
    ]
    assert len(lines) == 1, (
        f"README should have one 'ACL SETUSER {user} {first_rule} ...' line, has {len(lines)}"
    )
    return lines[0]


SYNC_ACL = readme_acl_line("rp_sync", "reset")
RETENTION_ACL = readme_acl_line("rp_sync", "+evalsha")
WRITER_ACL = readme_acl_line("rp_writer", "reset")


def readme_tls_urls() -> list[str]:
    """The README's REDIS_URL examples for TLS (server-verified, then mutual TLS)."""
    return re.findall(r"^REDIS_URL=(rediss://\S+)$", README, re.M)


class AclUsers:
    """Creates Redis ACL users from README lines (renamed, with the test's prefix and a fresh password)
    on one server, and deletes them afterwards; the default user is never touched."""

    def __init__(self, admin: redis.Redis, url: str, prefix: str):
        self.admin, self.url, self.prefix = admin, url, prefix
        self.created: list[str] = []
        self.passwords: dict[str, str] = {}

    def create(self, *lines: str, drop: tuple[str, ...] = ()) -> tuple[str, str]:
        """Apply the lines (each `ACL SETUSER <name> ...`) to one new user, leaving out the rules in `drop`;
        returns (user, URL that logs in as it)."""
        user, password = f"rp_acl_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
        self.created.append(user)
        self.passwords[user] = password
        for line in lines:
            words = shlex.split(line.replace("CHANGE-ME", password).replace("aidb:", self.prefix))
            assert words[:2] == ["ACL", "SETUSER"], line
            rules = [w for w in words[3:] if w not in drop]
            assert len(rules) == len(words[3:]) - len([d for d in drop if d in words[3:]])
            self.admin.execute_command("ACL", "SETUSER", user, *rules)
        return user, self.login_url(user, password)

    def login_url(self, user: str, password: str) -> str:
        scheme, rest = self.url.split("://", 1)
        return f"{scheme}://{user}:{password}@{rest}"

    def delete_all(self) -> None:
        if self.created:
            self.admin.execute_command("ACL", "DELUSER", *self.created)


@contextmanager
def acl_users(url: str, prefix: str, **client_options) -> Iterator[AclUsers]:
    admin = redis.Redis.from_url(url, **client_options)
    users = AclUsers(admin, url, prefix)
    try:
        yield users
    finally:
        users.delete_all()
        admin.close()
