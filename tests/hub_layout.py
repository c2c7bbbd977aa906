"""A model saved into the huggingface_hub cache layout, as a download leaves it: what the tests
of Hub-id inputs resolve offline (blobs are plain copies here; the hub reads either)."""

from pathlib import Path


def save_to_hub_cache(root: Path, model_dir: Path, repo: str, commit: str) -> tuple[str, str]:
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in model_dir.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return repo, commit
