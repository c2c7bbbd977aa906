"""A model saved into the huggingface_hub cache layout, as a download leaves it: what the tests
of Hub-id inputs resolve offline (blobs are plain copies here unless `linked`; the hub reads either)."""

import hashlib
from pathlib import Path


def save_to_hub_cache(root: Path, model_dir: Path, repo: str, commit: str, linked: bool = False) -> tuple[str, str]:
    """`linked`: each snapshot file a relative link to `../../blobs/<sha256>`, as a real download
    leaves it (what copying a Hub model's files must follow)."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in model_dir.iterdir():
        data = file.read_bytes()
        if linked:
            blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(exist_ok=True)
            blob.write_bytes(data)
            (snapshot / file.name).symlink_to(Path("../..") / "blobs" / blob.name)
        else:
            (snapshot / file.name).write_bytes(data)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return repo, commit
