"""A local Hugging Face cache built in a test, in the hub's own on-disk layout.

huggingface_hub keeps a repository as `models--ORG--NAME/` with `blobs/<hash>` (the files),
`snapshots/<commit>/<path>` (links to the blobs, one folder per commit) and `refs/<branch>`
(the commit a branch or tag points to). Octavo reads it only through huggingface_hub's own
functions; this writer stands in for a download the test machines cannot make.
"""

from __future__ import annotations

import hashlib
import os
import shutil


def put_in_cache(cache_dir: str, repo_id: str, folder: str, revision: str = "main", commit: str | None = None) -> str:
    """Store every file of `folder` as commit `commit` (default: a hash of the files) of `repo_id`,
    with `refs/<revision>` pointing to it; return the commit."""
    repo = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
    files = sorted(f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f)))
    digests = {}
    for name in files:
        with open(os.path.join(folder, name), "rb") as f:
            digests[name] = hashlib.sha256(f.read()).hexdigest()
    commit = commit or hashlib.sha1("".join(digests[n] for n in files).encode()).hexdigest()
    snapshot = os.path.join(repo, "snapshots", commit)
    os.makedirs(snapshot, exist_ok=True)
    os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
    for name in files:
        blob = os.path.join(repo, "blobs", digests[name])
        if not os.path.exists(blob):
            shutil.copyfile(os.path.join(folder, name), blob)
        link = os.path.join(snapshot, name)
        if not os.path.lexists(link):
            os.symlink(os.path.relpath(blob, snapshot), link)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", revision), "w") as f:
        f.write(commit)
    return commit
