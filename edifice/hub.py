"""Every Hugging Face Hub download of edifice goes through :func:`fetch`, so the Hub cache, ``HF_ENDPOINT``,
``HF_HUB_OFFLINE``, ``HF_HOME`` / ``HF_HUB_CACHE`` and tokens (``hf auth login``, ``HF_TOKEN``) behave as
users expect, with the Hub's own progress bars, and every failure becomes a one-line edifice error.

``snapshot_download`` with ``allow_patterns`` (rather than one ``hf_hub_download`` per file) resolves the
revision once, so all files of a checkpoint come from the same commit, and when the Hub cannot be reached it
falls back to the cache at once (``hf_hub_download`` retries a refused connection for ~20 s first).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .errors import CheckpointError, CheckpointNotFoundError, HubUnreachableError


def fetch(repo_id: str, files: Sequence[str], revision: str | None = None, *, asked: str,
          prefer_cache: bool = False, force: bool = False) -> Path:
    """The folder (a snapshot in the Hub cache) holding ``files`` of ``repo_id`` at ``revision`` (None = main).

    ``asked`` is what the user asked for (a preset name or repo id), for messages. With ``prefer_cache``
    files already in the cache are used without contacting the Hub (presets are fixed artefacts); otherwise
    a branch revision is checked for updates, as ``from_pretrained`` does, and a commit revision that is
    cached needs no request. ``force`` downloads again even when cached.
    """
    revision = revision or constants.DEFAULT_REVISION
    files = list(files)
    if prefer_cache and not force:
        try:
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=files, local_files_only=True))
            if all((folder / f).is_file() for f in files):
                return folder
        except LocalEntryNotFoundError:
            pass
    where = f"{repo_id}@{revision}"
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=files, force_download=force))
    except GatedRepoError:
        raise CheckpointNotFoundError(f"{asked}: {repo_id} is gated; accept its terms on the Hub, then log in with "
                                      "`hf auth login` or set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise CheckpointNotFoundError(f"{asked}: no repository {repo_id} on {constants.ENDPOINT} (or it is private: "
                                      "log in with `hf auth login` or set HF_TOKEN); check the name") from None
    except RevisionNotFoundError:
        raise CheckpointNotFoundError(f"{asked}: {repo_id} has no revision {revision!r}; pass an existing branch, "
                                      "tag or commit") from None
    except LocalEntryNotFoundError:
        raise HubUnreachableError(_unreachable(asked, where, files, revision)) from None
    except HfHubHTTPError as e:
        raise CheckpointError(f"{asked}: the Hub refused {where} ({str(e).splitlines()[0]})") from None
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise CheckpointNotFoundError(f"{asked}: {where} has no file {', '.join(missing)}; check the repository "
                                      "and revision (404)")
    return folder


def _unreachable(asked: str, where: str, files: list[str], revision: str) -> str:
    option = "" if revision == constants.DEFAULT_REVISION else f" --revision {revision}"
    todo = f"run `python -m edifice download {asked}{option}` where you are online, or pass a local folder"
    what = f"{where} ({', '.join(files)})"
    cache = f"it is not in the cache (HF_HOME={constants.HF_HOME}, cache {constants.HF_HUB_CACHE})"
    if constants.HF_HUB_OFFLINE:
        return f"{asked}: HF_HUB_OFFLINE is set and {what}: {cache}; unset HF_HUB_OFFLINE, or {todo}"
    return (f"{asked}: could not reach the Hugging Face Hub at {constants.ENDPOINT} for {what}; {cache}; "
            f"connect, or {todo}")
