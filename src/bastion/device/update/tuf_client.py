"""The device's TUF client: python-tuf's ngclient, bastion's HTTP client, bastion's errors.

:class:`DeviceTufClient` refreshes the release metadata with ngclient (root chain,
timestamp, snapshot, targets, TUF specification 5.3-5.6), then picks the release this
device should install (:func:`bastion.trust.tuf.pick_release`: product, hardware,
channel, never a lower SVN) from the product roles delegated its product and channel,
loaded and verified on demand, or lists every release
(:class:`~bastion.trust.tuf.ReleaseTarget`). ngclient decides what is trusted; this module only
fetches and translates (ADR 0029):

* :class:`HttpFetcher` is ngclient's ``FetcherInterface`` over the one HTTP client
  (:class:`bastion.io.http.HttpClient`): plain http only to loopback, a timeout, and
  each download read to at most the length ngclient allows plus one byte.
* :func:`translate` maps python-tuf's exceptions to bastion's tree, one class or
  message per attack: rollback of metadata (RollbackError), mix-and-match
  (MixAndMatchError), freeze (ExpiredError), endless data (LimitError), a signature
  threshold not met or a key rotated out (SignatureError, naming which), arbitrary
  software (DigestMismatchError, on :meth:`DeviceTufClient.download`).

The bundle itself is streamed and verified block by block by the installer
(device/update/install.py), from :meth:`DeviceTufClient.target_url`; it checks the
bundle's length, SHA-256 and verity root against the :class:`ReleaseTarget`.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from tuf.api import exceptions as tufx
from tuf.api.metadata import Metadata, Root, TargetFile, Targets
from tuf.api.serialization import DeserializationError
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from bastion.errors import (
    BastionError,
    ConfigError,
    DigestMismatchError,
    ExpiredError,
    FormatError,
    LimitError,
    MixAndMatchError,
    RollbackError,
    SignatureError,
    TransportError,
    VerificationError,
)
from bastion.io.http import HttpClient
from bastion.limits import (
    TUF_MAX_DELEGATIONS,
    TUF_MAX_ROOT_ROTATIONS,
    TUF_ROOT_MAX_SIZE,
    TUF_SNAPSHOT_MAX_SIZE,
    TUF_TARGETS_MAX_SIZE,
    TUF_TIMESTAMP_MAX_SIZE,
)
from bastion.trust.tuf import ReleaseTarget, pick_release, release_target

__all__ = ["DeviceTufClient", "HttpFetcher", "ReleaseTarget", "translate"]


def updater_config() -> UpdaterConfig:
    """ngclient's bounds, from :mod:`bastion.limits`."""
    return UpdaterConfig(
        max_root_rotations=TUF_MAX_ROOT_ROTATIONS,
        max_delegations=TUF_MAX_DELEGATIONS,
        root_max_length=TUF_ROOT_MAX_SIZE,
        timestamp_max_length=TUF_TIMESTAMP_MAX_SIZE,
        snapshot_max_length=TUF_SNAPSHOT_MAX_SIZE,
        targets_max_length=TUF_TARGETS_MAX_SIZE,
    )


class HttpFetcher(FetcherInterface):
    """ngclient's fetcher over :class:`~bastion.io.http.HttpClient`, bounded per download."""

    def __init__(self, client: HttpClient) -> None:
        self._client = client
        self._limit = TUF_TARGETS_MAX_SIZE
        #: the last metadata file fetched (URL, bytes), to explain a refused signature
        self.last: tuple[str, bytes] | None = None

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        self._limit = max_length
        with super().download_file(url, max_length) as f:
            yield f

    def _fetch(self, url: str) -> Iterator[bytes]:
        answer = self._client.get_file(url, max_bytes=self._limit + 1)
        if answer.status != 200:  # redirects are not followed: a mirror serves the files
            raise tufx.DownloadHTTPError(f"GET {url}: HTTP {answer.status}", answer.status)
        if url.endswith(".json"):
            self.last = (url, answer.content)
        return iter([answer.content])

    def close(self) -> None:
        self._client.close()


def _explain_unsigned(
    exc: tufx.UnsignedMetadataError, fetcher: Any, updater: Updater | None
) -> str:
    """Say whether refused metadata was short of its threshold or signed by unknown keys."""
    last = getattr(fetcher, "last", None)
    if not last or updater is None:
        return f"{exc}: below the signature threshold"
    url, data = last
    try:
        md = Metadata.from_bytes(data)
        trusted = updater._trusted_set  # ngclient's verified state
        role = md.signed.type
        if role == Targets.type:
            name = urllib.parse.unquote(url.rsplit("/", 1)[-1]).split(".", 1)[-1][: -len(".json")]
            delegator = trusted.root if name == Targets.type else trusted.targets
            role = name
        else:
            delegator = trusted.root
        keyids = set(delegator.get_delegated_role(role).keyids)
    except Exception:  # the explanation is best effort; the refusal stands regardless
        return f"{exc}: below the signature threshold"
    unknown = sorted(k for k in md.signatures if k not in keyids)
    if unknown:
        return (
            f"{role} is signed by key(s) {', '.join(k[:16] for k in unknown)} that the trusted "
            f"{'root' if isinstance(delegator, Root) else 'targets'} does not list for {role} "
            f"(a key rotated out, or never trusted): {exc}"
        )
    return f"{role} has too few valid signatures (keys below threshold): {exc}"


def translate(exc: Exception, *, what: str, target: bool = False) -> BastionError:
    """The bastion error for a python-tuf (or fetch) failure during ``what``."""
    cause = exc.__cause__
    if isinstance(exc, tufx.DownloadLengthMismatchError) or isinstance(cause, LimitError):
        return LimitError(f"{what}: endless data: {exc if cause is None else cause}")
    if isinstance(exc, tufx.DownloadHTTPError):
        return TransportError(f"{what}: {exc}")
    if isinstance(exc, tufx.DownloadError):
        if isinstance(cause, BastionError):
            return cause
        return TransportError(f"{what}: {exc}: {cause}")
    if isinstance(exc, tufx.ExpiredMetadataError):
        return ExpiredError(
            f"{what}: {exc} (a freeze attack, or a repository that stopped renewing it)"
        )
    if isinstance(exc, tufx.BadVersionNumberError):
        text = str(exc)
        # "Expected snapshot version 3, got 2" / "Expected edge v3, got v2." name a file
        # that is not the version asked for; "Expected targets.json version 2, got 3."
        # is a new snapshot listing a lower version than the trusted one: a rollback
        if text.startswith("Expected") and ".json version" not in text:
            return MixAndMatchError(
                f"{what}: {text}: the metadata is not the version its parent lists (mix-and-match)"
            )
        return RollbackError(f"{what}: metadata rollback: {text}")
    if isinstance(exc, tufx.LengthOrHashMismatchError):
        if target:
            return DigestMismatchError(
                f"{what}: the file does not match its signed length and SHA-256 "
                f"(arbitrary software): {exc}",
                area="target",
            )
        return MixAndMatchError(
            f"{what}: metadata does not match the hashes its parent lists (mix-and-match): {exc}"
        )
    if isinstance(exc, tufx.UnsignedMetadataError):
        return SignatureError(f"{what}: {exc}")
    if isinstance(exc, DeserializationError):
        return FormatError(f"{what}: {exc}")
    if isinstance(exc, tufx.RepositoryError):
        return VerificationError(f"{what}: {exc}")
    if isinstance(exc, BastionError):
        return exc
    return FormatError(f"{what}: {exc}")


class DeviceTufClient:
    """Release metadata for one device: refresh, list, pick, where to fetch."""

    def __init__(
        self,
        metadata_dir: Path,
        metadata_url: str,
        targets_url: str,
        fetcher: FetcherInterface | None,
        trusted_root: bytes | None = None,
    ) -> None:
        self.metadata_dir = metadata_dir
        self.metadata_url = metadata_url.rstrip("/") + "/"
        self.targets_url = targets_url.rstrip("/") + "/"
        for url in (self.metadata_url, self.targets_url):
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"TUF URL {url!r} must start with http:// or https://")
        self._fetcher = fetcher if fetcher is not None else HttpFetcher(HttpClient(metadata_url))
        self._trusted_root = trusted_root
        if trusted_root is None and not (metadata_dir / "root.json").is_file():
            raise ConfigError(f"no trusted TUF root: give one, or put root.json in {metadata_dir}")
        self._updater: Updater | None = None
        self._pending: Updater | None = None
        self._roles: dict[str, list[ReleaseTarget]] = {}
        self._files: dict[str, TargetFile] = {}

    def _new_updater(self) -> Updater:
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        try:
            return Updater(
                str(self.metadata_dir),
                self.metadata_url,
                None,
                self.targets_url,
                self._fetcher,
                updater_config(),
                bootstrap=self._trusted_root,
            )
        except (tufx.RepositoryError, ValueError) as exc:
            raise translate(exc, what="trusted root") from exc

    def refresh(self) -> None:
        """Fetch and verify root, timestamp, snapshot and targets; raise naming the attack.

        Product roles are loaded when first needed (:meth:`pick` loads only the roles
        delegated the device's product and channel, :meth:`releases` all of them), as
        ngclient itself does, so one product's metadata never blocks another's devices.
        A failed refresh leaves no releases behind (nothing from an earlier refresh).
        """
        self._updater = None
        self._roles = {}
        self._files = {}
        updater = self._pending = self._new_updater()
        try:
            self._guard(updater.refresh)
        finally:
            self._pending = None
        top = updater._trusted_set.targets
        names = list(top.delegations.roles) if top.delegations and top.delegations.roles else []
        if len(names) > TUF_MAX_DELEGATIONS:
            raise LimitError(
                f"targets delegates to {len(names)} roles (limit {TUF_MAX_DELEGATIONS})"
            )
        self._updater = updater

    def _guard(self, step: Any, *args: Any) -> Any:
        """Run one ngclient step; python-tuf's exceptions become bastion errors."""
        try:
            return step(*args)
        except tufx.UnsignedMetadataError as exc:
            explained = _explain_unsigned(exc, self._fetcher, self._updater or self._pending)
            raise SignatureError("TUF refresh: " + explained) from exc
        except (tufx.RepositoryError, tufx.DownloadError) as exc:
            raise translate(exc, what="TUF refresh") from exc

    def _role(self, name: str) -> list[ReleaseTarget]:
        """The releases of one role (``targets`` or a product role), loaded once."""
        updater = self._require()
        if name not in self._roles:
            if name == Targets.type:
                targets = updater._trusted_set.targets
            elif f"{name}.json" not in updater._trusted_set.snapshot.meta:
                targets = None  # delegated, never published: no releases yet
            else:
                targets = self._guard(updater._load_targets, name, Targets.type)
            out: list[ReleaseTarget] = []
            for path, tf in sorted(targets.targets.items()) if targets is not None else ():
                if path in self._files:
                    continue  # the first (most trusted) role listing a path wins
                self._files[path] = tf
                out.append(release_target(path, tf.length, tf.hashes, tf.custom))
            self._roles[name] = out
        return self._roles[name]

    def _role_names(self, path: str | None = None) -> list[str]:
        """``targets``, then the roles delegated ``path`` (every role when None), in order."""
        top = self._require()._trusted_set.targets
        names = [Targets.type]
        if top.delegations is not None and top.delegations.roles:
            if path is None:
                names += list(top.delegations.roles)
            else:
                for name, terminating in top.delegations.get_roles_for_target(path):
                    names.append(name)
                    if terminating:
                        break
        return names

    def _require(self) -> Updater:
        if self._updater is None:
            raise ConfigError("refresh() the TUF client first")
        return self._updater

    def releases(self) -> list[ReleaseTarget]:
        """Every release the verified metadata lists (loads every product role)."""
        return [r for name in self._role_names() for r in self._role(name)]

    def pick(
        self,
        product: str,
        hardware: str,
        channel: str,
        current_svn: int,
        current_version: str | None,
    ) -> ReleaseTarget | None:
        """The newest release for this product, hardware and channel, never a lower SVN.

        Loads only the roles delegated ``<product>/<channel>/*`` (verified as in
        :meth:`refresh`, raising the same errors).
        """
        probe = f"{product}/{channel}/release"
        candidates = [r for name in self._role_names(probe) for r in self._role(name)]
        return pick_release(
            candidates,
            product=product,
            hardware=hardware,
            channel=channel,
            current_svn=current_svn,
            current_version=current_version,
        )

    def candidates(self, product: str, channel: str) -> list[ReleaseTarget]:
        """Every release of the roles :meth:`pick` reads for ``product`` and ``channel``
        (to say why none was picked)."""
        probe = f"{product}/{channel}/release"
        return [r for name in self._role_names(probe) for r in self._role(name)]

    def target_url(self, target: ReleaseTarget) -> str:
        """Where the bundle is: ``targets/<dir>/<sha256>.<name>``, as ngclient forms it."""
        self._require()
        folder, sep, name = target.path.rpartition("/")
        return f"{self.targets_url}{folder}{sep}{target.sha256}.{name}"

    def close(self) -> None:
        """Close the HTTP client of the default fetcher."""
        close = getattr(self._fetcher, "close", None)
        if callable(close):
            close()

    def download(self, target: ReleaseTarget, directory: Path) -> Path:
        """Download a whole target with ngclient (length and SHA-256 checked) into ``directory``."""
        updater = self._require()
        if target.path not in self._files:
            self.releases()
        tf = self._files.get(target.path)
        if tf is None:
            raise ConfigError(f"target {target.path} is not in the refreshed metadata")
        directory.mkdir(parents=True, exist_ok=True)
        dest = directory / target.path.rsplit("/", 1)[-1]
        try:
            return Path(updater.download_target(tf, str(dest), self.targets_url))
        except (tufx.RepositoryError, tufx.DownloadError) as exc:
            raise translate(exc, what=f"target {target.path}", target=True) from exc
