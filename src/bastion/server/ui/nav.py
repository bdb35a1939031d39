"""The dashboard's navigation: a small registry of entries other features plug into.

An entry names the page route it links to (``route``: the FastAPI route *name*), where
it sits (``scope``: a fleet's tabs, an organisation's tabs, or the account menu) and the
weakest role that may open it. :func:`visible` shows an entry only when a route of that
name is mounted in the app and the caller's role reaches the minimum, so the pages of
other features (e.g. a fleet-wide commands list) appear as soon as a page route of the
declared name is mounted; this registry never imports them. The releases and rollouts
pages are mounted by :mod:`bastion.server.ui.releases`.

A feature adding a page declares it here (one line) and mounts a route named e.g.
``ui.releases`` whose path takes the scope's parameter (``fleet_id`` or ``org_id``);
it renders with :func:`bastion.server.ui.pages.render` to get the layout, the
navigation, the CSRF token and the security headers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from bastion.server.auth.rbac import OrgRole, Role


class NavScope(StrEnum):
    """Where an entry is shown."""

    FLEET = "fleet"  # tabs of one fleet: the route takes ``fleet_id``
    ORG = "org"  # tabs of one organisation: the route takes ``org_id``
    ACCOUNT = "account"  # the top bar: the route takes no parameter


@dataclass(frozen=True, slots=True)
class NavEntry:
    """One link of the navigation."""

    label: str
    route: str
    scope: NavScope
    #: fleet entries: the weakest fleet role that may open the page
    min_role: Role = Role.VIEWER
    #: organisation entries: the weakest organisation role
    min_org_role: OrgRole = OrgRole.MEMBER


#: every entry, in display order; entries whose route is not mounted are not shown
ENTRIES: tuple[NavEntry, ...] = (
    NavEntry("Fleets", "ui.fleets", NavScope.ACCOUNT),
    NavEntry("Account", "ui.account", NavScope.ACCOUNT),
    NavEntry("Devices", "ui.fleet", NavScope.FLEET),
    NavEntry("Members", "ui.fleet_members", NavScope.FLEET),
    NavEntry("Provisioning keys", "ui.provisioning_keys", NavScope.FLEET, Role.ADMIN),
    # mounted by ui/releases.py; "Commands" waits for a fleet-wide commands page
    NavEntry("Releases", "ui.releases", NavScope.FLEET),
    NavEntry("Rollouts", "ui.rollouts", NavScope.FLEET),
    NavEntry("Commands", "ui.commands", NavScope.FLEET),
    NavEntry("Members", "ui.org_members", NavScope.ORG),
    NavEntry("Audit log", "ui.audit", NavScope.ORG, min_org_role=OrgRole.OWNER),
)


@dataclass(frozen=True, slots=True)
class NavLink:
    """A rendered link: label, URL, and whether it is the current page."""

    label: str
    url: str
    current: bool


def _reaches(entry: NavEntry, role: Role | None, org_role: OrgRole | None) -> bool:
    if entry.scope is NavScope.FLEET:
        return role is not None and role.rank >= entry.min_role.rank
    if entry.scope is NavScope.ORG:
        if org_role is None:
            return False
        return entry.min_org_role is OrgRole.MEMBER or org_role is OrgRole.OWNER
    return True


def visible(
    mounted: Iterable[str],
    scope: NavScope,
    *,
    role: Role | None = None,
    org_role: OrgRole | None = None,
    entries: Iterable[NavEntry] = ENTRIES,
) -> list[NavEntry]:
    """The entries of ``scope`` whose route is mounted and whose minimum role is met."""
    names = set(mounted)
    return [
        e for e in entries if e.scope is scope and e.route in names and _reaches(e, role, org_role)
    ]
