"""Hugging Face hub IDs to local folders, through huggingface_hub's own cache.

huggingface_hub decides everything a user configures for it: where the cache is (HF_HOME,
HF_HUB_CACHE, or --download-dir), whether the hub may be reached (HF_HUB_OFFLINE), which token
to send (HF_TOKEN, the stored login, or --hf-token), and the progress bars of a download. With
the hub out of reach it answers from the cache; what is neither cached nor reachable is a
`ModelNotCachedError` that says how to fetch it.
"""

from __future__ import annotations

# what a model needs besides its weights: config.json, generation_config.json, the tokenizer
# (tokenizer.json, tokenizer_config.json, a SentencePiece .model, a tiktoken file, vocab and
# merges files) and a chat template file
_CONFIG_FILES = ["*.json", "*.jinja", "*.model", "*.tiktoken", "*.txt"]
_WEIGHT_FILES = {
    "safetensors": ["*.safetensors"],
    "pt": ["*.bin", "*.pt"],  # pickles: only fetched when the user opted in to loading them
}
# remote code is Python next to the config: only fetched for --trust-remote-code
_CODE_FILES = ["*.py"]


class ModelNotCachedError(FileNotFoundError):
    """A hub model is not in the local cache and cannot be downloaded now."""


def is_hub_id(name: str) -> bool:
    """Whether `name` is spelled as a hub repository ID ("org/name" or a legacy "name")."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def file_patterns(weights: str | None, trust_remote_code: bool) -> list[str]:
    """The files of a repository Octavo reads: configs and tokenizer, the weights in the chosen
    format (None: no weights, e.g. a tokenizer-only source), and remote code when trusted."""
    patterns = list(_CONFIG_FILES)
    if weights is not None:
        patterns += _WEIGHT_FILES[weights]
    if trust_remote_code:
        patterns += _CODE_FILES
    return patterns


def snapshot_folder(
    repo_id: str,
    *,
    revision: str | None,
    cache_dir: str | None,
    patterns: list[str],
    token: str | bool | None = None,
) -> str:
    """The local folder of `repo_id` at `revision`: from the cache, downloading what is missing
    when the hub can be reached (with huggingface_hub's progress bars)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    rev = revision or "main"
    try:
        return str(
            snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns, token=token)
        )
    except GatedRepoError:
        raise PermissionError(
            f"model {repo_id!r} is gated: accept its terms on huggingface.co, then pass a token with access "
            "(HF_TOKEN, `hf auth login`, or --hf-token)"
        ) from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"model {repo_id!r} is not on the Hugging Face hub (or is private: pass a token with HF_TOKEN or "
            "--hf-token); check the name, or pass a local model directory"
        ) from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"model {repo_id!r} has no revision {rev!r} on the hub") from None
    except LocalEntryNotFoundError as e:
        cache = cache_dir or constants.HF_HUB_CACHE
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub could not be reached"
        fetch = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
        if cache_dir:
            fetch += f" --cache-dir {cache_dir}"
        raise ModelNotCachedError(
            f"model {repo_id!r} (revision {rev!r}) is not cached in {cache} and {why}. Fetch it on a machine that "
            f"reaches the hub with `{fetch}` and copy that cache here (HF_HOME / HF_HUB_CACHE, or --download-dir, "
            f"point to it), or pass a local model directory"
        ) from e
