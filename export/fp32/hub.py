"""Where a checkpoint is: a local directory, ``demo``, or a Hugging Face hub id, downloaded into (or found in)
the standard Hugging Face cache by ``huggingface_hub`` itself."""

from __future__ import annotations

import os
import re
from pathlib import Path

from vitmsn.core.errors import InputError

DEMO = "demo"
DEMO_DIR = Path(__file__).resolve().parents[1] / "demo" / "checkpoint"


def _hf_cache_root() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def _from_hf_cache(repo_id: str, revision: str = "main") -> Path | None:
    repo_dir = _hf_cache_root() / ("models--" + repo_id.replace("/", "--"))
    ref = repo_dir / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo_dir / "snapshots" / commit
    return snapshot if (snapshot / "config.json").is_file() else None


def _is_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def looks_like_local_path(source: str) -> bool:
    """A path the user meant as a local directory: starts with '/', '.', '~', has more than one
    separator, has a backslash, is not of the hub's ``owner/name`` form, or its first component exists here."""
    if source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") > 1:
        return True
    if HUB_ID.fullmatch(source) is None:
        return True
    return Path(source.split("/")[0]).exists()


def resolve_source(source: str, option: str = "--model", revision: str | None = None) -> Path:
    """The absolute directory holding config.json for ``source`` (a path, ``demo`` or a hub id).

    ``option`` names where the source came from in error messages (``--model``, ``--checkpoint``,
    the manifest's ``model.source``). A hub id goes through ``huggingface_hub.snapshot_download``:
    the standard Hugging Face cache (``HF_HOME``, ``HF_HUB_CACHE``), its progress bars, ``HF_TOKEN``,
    ``HF_HUB_OFFLINE`` (cache only) and ``HF_ENDPOINT`` all behave as in any Hugging Face tool;
    ``revision`` is a branch, tag or commit (default: main). The snapshot directory is named by the
    resolved commit hash (:func:`hub_revision`).
    """
    if source == DEMO:
        return DEMO_DIR
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{option} {source}: is a file; pass the checkpoint directory (config.json + weights), a hub id, or 'demo'")
        return path.resolve()
    if looks_like_local_path(source):
        raise InputError(f"{option} {source}: no such directory; pass a checkpoint directory (config.json + weights), "
                         "a hub id of the form owner/name, or 'demo'")
    neither = f"{option} {source}: no such directory, and as a hub id"
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError:  # the export extra declares it; a runtime-side caller may lack it: the cache still works
        cached = _from_hf_cache(source, revision or "main")
        if cached is not None:
            return cached.resolve()
        raise InputError(f"{neither} it is not in the local Hugging Face cache ({_hf_cache_root()}) and huggingface_hub "
                         "is not installed to download it: pip install 'vitmsn[export]'") from None
    try:
        # The cache and offline mode read from the environment now (the hub reads them once, at its import).
        return Path(snapshot_download(source, revision=revision, allow_patterns=HUB_FILES, cache_dir=_hf_cache_root(),
                                      local_files_only=_is_offline())).resolve()
    except RevisionNotFoundError:
        raise InputError(f"{option} {source}: the hub model has no revision {revision!r}; pass a branch, tag or "
                         "commit with --revision") from None
    except RepositoryNotFoundError:
        raise InputError(f"{neither} the hub has no such model (or it is private: set HF_TOKEN); pass a checkpoint "
                         "directory, a hub id of the form owner/name, or 'demo'") from None
    except LocalEntryNotFoundError:
        how = ("HF_HUB_OFFLINE is set, so nothing is downloaded" if _is_offline()
               else "the hub could not be reached")
        raise InputError(f"{neither} it is not in the local Hugging Face cache ({_hf_cache_root()}) and {how}; "
                         "run once with network access (the download lands in that cache), or pass a local "
                         "checkpoint directory") from None
    except Exception as exc:  # network and HTTP errors come in many types; all mean the same here
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise InputError(f"{option} {source}: the hub download failed ({type(exc).__name__}: {first}); check the id, "
                         "the network and HF_TOKEN, or set HF_HUB_OFFLINE=1 to use the local cache only") from None


HUB_FILES = ["*.json", "*.safetensors", "*.bin"]
HUB_SNAPSHOT = re.compile(r"[0-9a-f]{40}")


def hub_revision(directory: Path) -> str | None:
    """The commit hash of a Hugging Face cache snapshot directory (``.../snapshots/<commit>``), else None."""
    if directory.parent.name == "snapshots" and HUB_SNAPSHOT.fullmatch(directory.name):
        return directory.name
    return None
