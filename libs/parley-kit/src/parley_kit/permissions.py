"""The permission matrix: what each space role may do, across the platform.

This module is the one source of the matrix; every service enforces it through
`require()`, and the workspace README renders it. Roles are cumulative:
agent ⊂ manager ⊂ owner. `system` is the role of internal service tokens.
"""

from __future__ import annotations

from enum import StrEnum

from parley_kit.errors import PermissionDenied


class Role(StrEnum):
    AGENT = "agent"
    MANAGER = "manager"
    OWNER = "owner"
    SYSTEM = "system"


class Permission(StrEnum):
    # agents: converse, tag, edit contacts, reply
    CONVERSATIONS_READ = "conversations.read"
    CONVERSATIONS_REPLY = "conversations.reply"
    CONVERSATIONS_MANAGE = "conversations.manage"  # open, assign, close, reopen
    CONTACTS_READ = "contacts.read"
    CONTACTS_WRITE = "contacts.write"  # create, edit, tag, assign
    SHORTCUTS_USE = "shortcuts.use"
    VIEWS_READ = "views.read"
    VIEWS_WRITE_OWN = "views.write_own"
    CHANNELS_READ = "channels.read"
    FIELDS_READ = "fields.read"
    TEAMS_READ = "teams.read"
    MEMBERS_READ = "members.read"
    AVAILABILITY_SET_OWN = "availability.set_own"
    # managers: also channels, fields, views, shortcuts, workflows, broadcasts, reports
    CONTACTS_DELETE = "contacts.delete"
    CONTACTS_IMPORT = "contacts.import"
    CONTACTS_MERGE = "contacts.merge"
    CHANNELS_MANAGE = "channels.manage"
    FIELDS_MANAGE = "fields.manage"
    TAGS_MANAGE = "tags.manage"
    VIEWS_MANAGE = "views.manage"
    SHORTCUTS_MANAGE = "shortcuts.manage"
    WORKFLOWS_MANAGE = "workflows.manage"
    BROADCASTS_MANAGE = "broadcasts.manage"
    REPORTS_READ = "reports.read"
    TEAMS_MANAGE = "teams.manage"
    AVAILABILITY_SET_ANY = "availability.set_any"
    # owners: also members, roles, API keys, space settings
    MEMBERS_MANAGE = "members.manage"
    API_KEYS_MANAGE = "api_keys.manage"
    SPACE_SETTINGS = "space.settings"
    # internal services only
    INTERNAL = "internal"


_AGENT = frozenset(
    {
        Permission.CONVERSATIONS_READ,
        Permission.CONVERSATIONS_REPLY,
        Permission.CONVERSATIONS_MANAGE,
        Permission.CONTACTS_READ,
        Permission.CONTACTS_WRITE,
        Permission.SHORTCUTS_USE,
        Permission.VIEWS_READ,
        Permission.VIEWS_WRITE_OWN,
        Permission.CHANNELS_READ,
        Permission.FIELDS_READ,
        Permission.TEAMS_READ,
        Permission.MEMBERS_READ,
        Permission.AVAILABILITY_SET_OWN,
    }
)
_MANAGER = _AGENT | {
    Permission.CONTACTS_DELETE,
    Permission.CONTACTS_IMPORT,
    Permission.CONTACTS_MERGE,
    Permission.CHANNELS_MANAGE,
    Permission.FIELDS_MANAGE,
    Permission.TAGS_MANAGE,
    Permission.VIEWS_MANAGE,
    Permission.SHORTCUTS_MANAGE,
    Permission.WORKFLOWS_MANAGE,
    Permission.BROADCASTS_MANAGE,
    Permission.REPORTS_READ,
    Permission.TEAMS_MANAGE,
    Permission.AVAILABILITY_SET_ANY,
}
_OWNER = _MANAGER | {Permission.MEMBERS_MANAGE, Permission.API_KEYS_MANAGE, Permission.SPACE_SETTINGS}

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.AGENT: _AGENT,
    Role.MANAGER: frozenset(_MANAGER),
    Role.OWNER: frozenset(_OWNER),
    Role.SYSTEM: frozenset(Permission),
}


def allows(role: Role | str, permission: Permission) -> bool:
    """Whether `role` grants `permission`; an unknown role grants nothing."""
    try:
        return permission in ROLE_PERMISSIONS[Role(role)]
    except ValueError:
        return False


def check(role: Role | str, permission: Permission) -> None:
    """Raise PermissionDenied naming the missing permission."""
    if not allows(role, permission):
        raise PermissionDenied(f"role '{role}' lacks permission '{permission}'")


def matrix_markdown() -> str:
    """The matrix as a Markdown table (rendered into the workspace README)."""
    roles = [Role.AGENT, Role.MANAGER, Role.OWNER]
    lines = ["| permission | " + " | ".join(roles) + " |", "|---" * (len(roles) + 1) + "|"]
    for perm in Permission:
        if perm is Permission.INTERNAL:
            continue
        cells = ["yes" if perm in ROLE_PERMISSIONS[r] else "—" for r in roles]
        lines.append(f"| `{perm}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)
