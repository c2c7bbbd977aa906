"""Storage settings in campaigns: the memory plan before a run, the run's identity, OOM failures,
and the settings reaching the evaluator, MASS and the dask workers."""

import importlib.util
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from agreement_task import AgreementTask  # tests/search is on sys.path (pytest's rootdir import mode)
from bf16_copies import bf16_copies  # tests/ is on sys.path (its conftest)
from campaigns import agreement_tasks, campaign_config
from click.testing import CliRunner
from pydantic import ValidationError

from evo_merge.cli import cli
from evo_merge.config import Campaign
from evo_merge.merge import register_method
from evo_merge.merge.footprint import GIB
from evo_merge.merge.host import memory_filesystem
from evo_merge.merge.storage import Storage
from evo_merge.search.binding import config_fingerprint
from evo_merge.search.capacity import campaign_plan
from evo_merge.zoo.tiny import save_tiny_family

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return save_tiny_family(tmp_path_factory.mktemp("zoo"), "llama", n_finetunes=2, noise=0.08)


@pytest.fixture(autouse=True)
def _tasks_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))  # agreement_task, as the other campaign tests use it


def config(zoo, **overrides) -> dict:
    return campaign_config(*zoo, **{
        "name": "storage", "tasks": agreement_tasks(zoo[1], n_items=40), "methods": {"task_arithmetic": {}, "tsv": {}},
        "algorithm": {"population": 4, "generations": 1, "seed": 1}, "device": "cpu", **overrides})


def write(tmp_path, data) -> Path:
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_plan_prints_host_bytes_and_a_campaign_that_cannot_fit_stops_before_any_run(tmp_path, zoo):
    ok = CliRunner().invoke(cli, ["plan", str(write(tmp_path, config(zoo)))])
    assert ok.exit_code == 0, ok.output
    assert "task vectors, stored (2 x auto: float32)" in ok.output
    assert "TSV-M pieces" in ok.output and "fits" in ok.output
    figures = [line for line in ok.output.splitlines() if line.endswith(("B", "host"))]  # "... 0.15 GiB"
    assert len(figures) > 5 and len({len(line) for line in figures}) == 1, ok.output  # one column, however long a label

    small = write(tmp_path, config(zoo, storage={"host_budget_gib": 0.01}))
    run = tmp_path / "run"
    for args in (["plan", str(small)], ["run", str(small), "--out", str(run)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        error = result.output.strip().splitlines()[-1]
        assert error.startswith("error: memory plan: the run needs") and "storage.host_budget_gib is 10.2 MiB" in error
        assert "no storage setting or batch size fits; the leanest (storage: {dtype: bfloat16" in error
        assert "evaluator: {batch_size: 1})" in error
        assert result.output.count("memory plan") == 1 and "the leanest" not in result.output[:-len(error)]
    assert not run.exists()  # stopped before the run folder (and any evaluation)


@pytest.mark.skipif(torch.cuda.is_available(), reason="plans a GPU this machine lacks")
def test_plan_plans_a_gpu_this_machine_lacks_against_its_budget_and_run_still_needs_it(tmp_path, zoo):
    """On a laptop or a login node, before a GPU machine is rented: `device: cuda` with
    `storage.device_budget_gib` is planned against the budget, where `plan` refused it as `run`
    does (audit 123); without a budget, and for `run`, the GPU must be here."""
    budgeted = write(tmp_path, config(zoo, device="cuda", storage={"device_budget_gib": 1, "host_budget_gib": 4}))
    ok = CliRunner().invoke(cli, ["plan", str(budgeted)])
    assert ok.exit_code == 0, ok.output
    assert ("cuda: torch sees no such GPU here: planned against storage.device_budget_gib, the host against "
            "storage.host_budget_gib; `run` needs the GPU") in ok.output
    header = next(line for line in ok.output.splitlines() if line.startswith("bytes per worker"))
    assert header.split() == ["bytes", "per", "worker", "host", "cuda:0"]
    assert "cuda:0: storage.device_budget_gib is 1.00 GiB" in ok.output and ok.output.rstrip().endswith("fits")
    # the plan on the GPU: the stored weights there, as `plan` on the GPU machine itself would count them
    stored = next(line for line in ok.output.splitlines() if line.startswith("task vectors, stored"))
    assert stored.split()[-4:] == ["0.0", "MiB", *stored.split()[-2:]] and stored.split()[-2] != "0.0", stored
    tight = write(tmp_path, config(zoo, device="cuda", storage={"device_budget_gib": 0.001}))
    refused = CliRunner().invoke(cli, ["plan", str(tight)])
    assert refused.exit_code == 2 and "on cuda:0 but storage.device_budget_gib is 1.0 MiB" in refused.output
    assert "the host against this machine's memory (give storage.host_budget_gib" in refused.output
    for args in (["plan", str(write(tmp_path, config(zoo, device="cuda")))],  # no budget: nothing to plan against
                 ["run", str(budgeted), "--out", str(tmp_path / "run")]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2 and "device: cuda asked for, but torch sees 0 CUDA device(s)" in result.output
    assert not (tmp_path / "run").exists()
    # the GPU a campaign names, by its index; `device: auto` with a budget plans the CPU it finds, and says so
    second = CliRunner().invoke(cli, ["plan", str(write(tmp_path, config(zoo, device="cuda:1",
                                                                          storage={"device_budget_gib": 1})))])
    assert second.exit_code == 0 and second.output.startswith("tasks:"), second.output
    assert "cuda:1: torch sees no such GPU here" in second.output and "cuda:1\n" in second.output, second.output
    auto = CliRunner().invoke(cli, ["plan", str(write(tmp_path, config(zoo, device="auto",
                                                                        storage={"device_budget_gib": 1})))])
    assert auto.exit_code == 0 and ("device: auto finds no GPU here, so this is the CPU's plan "
                                    "(storage.device_budget_gib unused)") in auto.output, auto.output
    assert "cuda" not in next(line for line in auto.output.splitlines() if line.startswith("bytes per worker"))
    if importlib.util.find_spec("distributed") is not None:  # a local cluster: one GPU per worker assumed, said
        dask = CliRunner().invoke(cli, ["plan", str(write(tmp_path, config(
            zoo, device="cuda", evaluator={"kind": "dask", "n_workers": 2},
            storage={"device_budget_gib": 1, "host_budget_gib": 8})))])
        assert dask.exit_code == 0, dask.output
        assert "planned against storage.device_budget_gib, for 2 dask workers with a GPU each" in dask.output
        assert "total for 2 workers on this machine" in dask.output, dask.output


def test_a_gpu_is_elsewhere_when_this_machine_lacks_that_one_and_a_budget_is_given(zoo, monkeypatch):
    """`cuda:1` on a machine with one GPU is elsewhere, `cuda:0` is not; nor is a remote cluster's
    (its workers check their own), nor a campaign without a device budget."""
    from evo_merge.search.capacity import gpu_elsewhere

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    def campaign(device, budget=1.0, **evaluator):
        return Campaign.model_validate(config(zoo, device=device, storage={"device_budget_gib": budget},
                                              **({"evaluator": evaluator} if evaluator else {})))

    assert gpu_elsewhere(campaign("cuda:1")) and not gpu_elsewhere(campaign("cuda:0"))
    assert not gpu_elsewhere(campaign("cuda")) and not gpu_elsewhere(campaign("auto"))
    assert not gpu_elsewhere(campaign("cuda:1", budget=None))
    assert not gpu_elsewhere(campaign("cuda:1", kind="dask", address="tcp://10.0.0.1:8786"))


def test_the_error_names_the_first_storage_setting_that_fits(tmp_path, zoo):
    base, fts = zoo
    sizes = {}
    one = {"kind": "local", "batch_size": 1}  # no smaller batch to offer first
    for dtype in ("float32", "bfloat16"):
        campaign = Campaign.model_validate(config(zoo, storage={"dtype": dtype}, evaluator=one))
        sizes[dtype] = campaign_plan(campaign, base, fts).need_host
    assert sizes["bfloat16"] < sizes["float32"]
    budget = (sizes["bfloat16"] + sizes["float32"]) / 2 / GIB
    path = write(tmp_path, config(zoo, storage={"host_budget_gib": budget}, evaluator=one))
    result = CliRunner().invoke(cli, ["plan", str(path)])
    assert result.exit_code == 2
    assert "storage: {dtype: bfloat16, placement: device} fits" in result.output.splitlines()[-1]


def test_a_smaller_evaluation_batch_is_offered_before_another_storage(tmp_path, zoo):
    """Activations are often the largest line; a smaller batch keeps the stored weights as they are."""
    base, fts = zoo
    need = {b: campaign_plan(Campaign.model_validate(config(zoo, evaluator={"kind": "local", "batch_size": b})),
                             base, fts).need_host for b in (64, 32)}
    budget = (need[64] + need[32]) / 2 / GIB
    path = write(tmp_path, config(zoo, storage={"host_budget_gib": budget}, evaluator={"kind": "local",
                                                                                       "batch_size": 64}))
    result = CliRunner().invoke(cli, ["plan", str(path)])
    assert result.exit_code == 2 and "evaluator: {batch_size: 32} fits" in result.output.splitlines()[-1]
    assert "sequence_tokens" not in result.output.splitlines()[-1]  # the runtime outweighs these activations


def test_a_plan_whose_activations_outweigh_the_rest_says_they_assumed_512_tokens(tmp_path, zoo):
    """A 135M model on 30-token tasks planned 19.0 GiB, 13.7 of it logits for 512-token
    sequences, and used 5.0: where the default sequence length sized the largest line, the plan says so."""
    base, fts = zoo
    need = {b: campaign_plan(Campaign.model_validate(config(zoo, evaluator={"kind": "local", "batch_size": b})),
                             base, fts) for b in (1024, 512)}
    assert max(need[1024].lines, key=lambda line: line.host).what.startswith("activations")
    budget = (need[1024].need_host + need[512].need_host) / 2 / GIB
    for evaluator, said in (({"batch_size": 1024}, True), ({"batch_size": 1024, "sequence_tokens": 512}, False)):
        data = config(zoo, storage={"host_budget_gib": budget}, evaluator={"kind": "local", **evaluator})
        last = CliRunner().invoke(cli, ["plan", str(write(tmp_path, data))]).output.splitlines()[-1]
        assert "evaluator: {batch_size: 512} fits" in last
        assert ("the activations are sized for 512-token sequences, evaluator.sequence_tokens' default" in last) == said


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """Three copies of a Llama whose weights outweigh the plan's activation steps (the plan reads
    headers only: the copies need not differ)."""
    from evo_merge.zoo.tiny import make_tiny_causal_lm
    from evo_merge.zoo.tokenizer import build_char_tokenizer

    root, tokenizer = tmp_path_factory.mktemp("wide"), build_char_tokenizer()
    model = make_tiny_causal_lm("llama", vocab_size=len(tokenizer), hidden=256, layers=6)
    for name in ("base", "a", "b"):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root / "base", [root / "a", root / "b"]


def test_storage_and_a_smaller_batch_together_are_offered_when_neither_alone_fits(tmp_path, wide):
    """At size, bf16 storage alone or a batch of 1 alone can both fall short where the two together
    fit: the plan said no storage setting fits."""
    base, fts = wide

    def need(dtype: str, batch: int) -> int:
        campaign = Campaign.model_validate(config(wide, storage={"dtype": dtype},
                                                  evaluator={"kind": "local", "batch_size": batch}))
        return campaign_plan(campaign, base, fts).need_host

    alone = min(need("float32", 1), need("bfloat16", 8))
    assert need("bfloat16", 4) < alone  # the case: only the combination fits under the budget below
    budget = (need("bfloat16", 4) + alone) / 2 / GIB
    path = write(tmp_path, config(wide, storage={"dtype": "float32", "host_budget_gib": budget},
                                  evaluator={"kind": "local", "batch_size": 8}))
    result = CliRunner().invoke(cli, ["plan", str(path)])
    assert result.exit_code == 2
    assert ("storage: {dtype: bfloat16, placement: device} and evaluator: {batch_size: 4} fits"
            in result.output.splitlines()[-1])


def test_a_new_campaign_with_nothing_leaner_to_offer_is_not_told_about_resumes(tmp_path, zoo):
    path = write(tmp_path, config(zoo, dtype="bfloat16", storage={"dtype": "bfloat16", "placement": "disk",
                                                                  "host_budget_gib": 0.01},
                                  evaluator={"kind": "local", "batch_size": 1}))
    result = CliRunner().invoke(cli, ["plan", str(path)])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1].endswith("no leaner storage setting or batch size exists")


def test_a_cpu_campaign_whose_disk_folder_is_short_is_offered_memory_not_told_nothing_fits(tmp_path, zoo,
                                                                                         monkeypatch):
    """`placement: disk` on a CPU with too little room in `disk_dir` said "no storage setting or
    batch size fits", where keeping the weights in memory did (audit 126)."""
    monkeypatch.setattr("evo_merge.search.capacity.free_disk", lambda directory: 1024)  # 1 KiB free there
    (tmp_path / "scratch").mkdir()
    path = write(tmp_path, config(zoo, storage={"placement": "disk", "disk_dir": str(tmp_path / "scratch")}))
    result = CliRunner().invoke(cli, ["plan", str(path)])
    assert result.exit_code == 2, result.output
    error = result.output.strip().splitlines()[-1]
    assert "of files in" in error and "but only 0.0 MiB is free there" in error, error
    assert "storage: {dtype: auto, placement: device} fits (host" in error, error
    assert "; so does storage.disk_dir on a disk with 64.0 MiB free (host" in error, error


def test_a_roomier_disk_is_offered_alone_where_no_leaner_setting_was_found(tmp_path, zoo, monkeypatch):
    """Whether a setting fitted was read from the start of the sentence saying so: a resume's "keeps
    this run's batch size" (nothing found) was followed by "; so does" the roomier disk (audit 131)."""
    from evo_merge.search import capacity

    nothing = "a resume keeps this run's batch size and dtypes: start the campaign in a new run folder"
    monkeypatch.setattr(capacity, "_leaner", lambda *args: (nothing, False))
    monkeypatch.setattr(capacity, "free_disk", lambda directory: 1024)
    (tmp_path / "scratch").mkdir()
    path = write(tmp_path, config(zoo, storage={"placement": "disk", "disk_dir": str(tmp_path / "scratch")}))
    error = CliRunner().invoke(cli, ["plan", str(path)]).output.strip().splitlines()[-1]
    assert "storage.disk_dir on a disk with 64.0 MiB free fits (host" in error and "so does" not in error, error


def test_plan_says_a_cpu_decomposes_a_large_model_s_matrices_for_tsv(tmp_path, zoo, monkeypatch):
    """TSV-M's first candidate spent 10 minutes on a CPU decomposing a 0.67B model, with nothing in
    `plan` and a progress line saying "merging" (audit 126). From 100M parameters (here: any) `plan`
    says so; without a method that decomposes, nothing."""
    monkeypatch.setattr("evo_merge.search.capacity.DECOMPOSED_SLOWLY", 0)
    with_tsv = CliRunner().invoke(cli, ["plan", str(write(tmp_path, config(zoo)))])
    assert with_tsv.exit_code == 0, with_tsv.output
    last = with_tsv.output.strip().splitlines()[-1]
    assert last.startswith("note: tsv on a CPU: the first candidate decomposes every matrix of each of the 2 task "
                           "vectors"), with_tsv.output
    without = CliRunner().invoke(cli, ["plan", str(write(tmp_path, config(zoo, methods={"task_arithmetic": {}})))])
    assert without.exit_code == 0 and "decomposes" not in without.output, without.output


def test_a_resume_that_does_not_fit_is_offered_only_what_a_resume_may_change(tmp_path, zoo):
    """Batch size and dtypes are part of what a run computes: a resume cannot take them."""
    base, fts = zoo
    need = {b: campaign_plan(Campaign.model_validate(config(zoo, evaluator={"kind": "local", "batch_size": b})),
                             base, fts).need_host for b in (64, 32)}
    budget = (need[64] + need[32]) / 2 / GIB
    campaign = Campaign.model_validate(config(zoo, storage={"host_budget_gib": budget},
                                              evaluator={"kind": "local", "batch_size": 64}))
    assert "batch_size: 32" in campaign_plan(campaign, base, fts).alternative
    resumed = campaign_plan(campaign, base, fts, resuming=True).alternative
    assert "batch_size: 32" not in resumed and "a resume keeps this run's batch size" in resumed


def test_placement_and_budgets_leave_the_run_identity_and_dtype_changes_it(zoo):
    plain = Campaign.model_validate(config(zoo))
    moved = Campaign.model_validate(config(zoo, storage={"placement": "host", "host_budget_gib": 12}))
    on_disk = Campaign.model_validate(config(zoo, storage={"placement": "disk", "disk_dir": "/scratch"}))
    assert config_fingerprint(on_disk) == config_fingerprint(plain)
    lean = Campaign.model_validate(config(zoo, storage={"dtype": "bfloat16"}))
    assert config_fingerprint(moved) == config_fingerprint(plain) != config_fingerprint(lean)


def test_a_campaign_takes_the_dtype_names_a_recipe_takes(zoo):
    """`merge` and recipes take `bf16`, `fp32`, `half`; a campaign refused them ("Input should be
    'auto', 'float32', 'bfloat16' or 'float16'"). They are the same run as the full names."""
    short = Campaign.model_validate(config(zoo, dtype="BF16", storage={"dtype": "Float32"}))
    full = Campaign.model_validate(config(zoo, dtype="bfloat16", storage={"dtype": "float32"}))
    # torch's spelling, which `merge --dtype` and recipes take too (a campaign's own rule refused it, audit 140)
    spelled = Campaign.model_validate(config(zoo, dtype="torch.bfloat16", storage={"dtype": "Auto"}))
    assert (short.dtype, short.storage.dtype) == ("bfloat16", "float32")
    assert (spelled.dtype, spelled.storage.dtype) == ("bfloat16", "auto")
    assert config_fingerprint(short) == config_fingerprint(full)
    with pytest.raises(ValidationError, match="Input should be 'auto', 'float32', 'bfloat16' or 'float16'"):
        Campaign.model_validate(config(zoo, dtype="bf17"))


def evaluations(run: Path) -> list:
    return sorted(sqlite3.connect(run / "state.sqlite").execute("SELECT key, status, estimates FROM evaluations"))


def test_a_run_resumes_with_another_placement_and_reuses_every_evaluation(tmp_path, zoo):
    run = tmp_path / "run"
    first = CliRunner().invoke(cli, ["run", str(write(tmp_path, config(zoo))), "--out", str(run)])
    assert first.exit_code == 0, first.output
    before = evaluations(run)
    stored = yaml.safe_load((run / "campaign.yaml").read_text())
    (run / "campaign.yaml").write_text(yaml.safe_dump({**stored, "storage": {"placement": "host"}}))
    again = CliRunner().invoke(cli, ["resume", str(run)])
    assert again.exit_code == 0, again.output
    assert evaluations(run) == before and len(before) >= 4
    # `plan --out` checks the folder's campaign as `run` does: it said "fits" of one `run` then refused
    other = write(tmp_path, {**stored, "algorithm": {**stored["algorithm"], "seed": 9}})
    planned = CliRunner().invoke(cli, ["plan", str(other), "--out", str(run)])
    assert planned.exit_code == 2 and "holds a different campaign (changed: algorithm.seed)" in planned.output
    moved = write(tmp_path, {**stored, "storage": {"placement": "host"}})  # what a resume may change
    assert CliRunner().invoke(cli, ["plan", str(moved), "--out", str(run)]).exit_code == 0


def test_a_campaign_with_disk_placement_scores_as_in_memory_and_leaves_no_file(tmp_path, zoo):
    """The stored weights in files in the run folder (the default) or in `disk_dir`, relative to the
    campaign file: every evaluation as with `device`, and no file left once the run is done."""
    scores = {}
    for name, storage in (("device", {"dtype": "bfloat16"}),
                          ("disk", {"dtype": "bfloat16", "placement": "disk"}),
                          ("disk_dir", {"dtype": "bfloat16", "placement": "disk", "disk_dir": "scratch"})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "scratch").mkdir()
        run = tmp_path / name / "run"
        result = CliRunner().invoke(cli, ["run", str(write(tmp_path / name, config(zoo, storage=storage))),
                                          "--out", str(run)])
        assert result.exit_code == 0, result.output
        scores[name] = evaluations(run)
        assert not [p for p in (tmp_path / name).rglob("*") if "evo-merge-stash" in p.name]
        assert yaml.safe_load((run / "campaign.yaml").read_text())["storage"].get("disk_dir") in (
            None, str(tmp_path / name / "scratch"))
    assert scores["disk"] == scores["device"] == scores["disk_dir"] and len(scores["device"]) >= 4


def test_disk_placement_keeps_its_files_in_the_run_folder_unless_disk_dir_names_another(tmp_path, zoo):
    """The run folder's disk, which the user chose for the run's outputs, not the system's temporary
    folder (often small, or held in RAM); a `disk_dir` of the campaign's own is kept as it is."""
    from evo_merge.search.workspace import with_disk_dir

    run = tmp_path / "runs" / "r"
    default = Campaign.model_validate(config(zoo, storage={"placement": "disk"}))
    named = Campaign.model_validate(config(zoo, storage={"placement": "disk", "disk_dir": "/scratch"}))
    in_memory = Campaign.model_validate(config(zoo, storage={"placement": "host"}))
    assert with_disk_dir(default, run).storage.disk_dir == str(run)
    assert with_disk_dir(named, run) == named and with_disk_dir(in_memory, run) == in_memory
    assert Storage.of(with_disk_dir(default, run).storage) == Storage(None, "disk", str(run))


def test_the_plan_offers_disk_placement_when_the_stored_weights_do_not_fit_in_memory(tmp_path, zoo):
    base, fts = zoo
    one = {"kind": "local", "batch_size": 1}
    need = {placement: campaign_plan(Campaign.model_validate(config(
        zoo, storage={"dtype": "bfloat16", "placement": placement, "disk_dir": str(tmp_path)}, evaluator=one)),
        base, fts) for placement in ("device", "disk")}
    assert need["disk"].need_disk > 0 and need["disk"].need_host < need["device"].need_host
    # the stored tensors move to files, which are slabs: their unused ends take disk space too
    ends = next(line.disk for line in need["disk"].lines if line.what.startswith("stored tensors' slabs"))
    assert need["disk"].need_host + need["disk"].need_disk == need["device"].need_host + ends
    budget = (need["disk"].need_host + need["device"].need_host) / 2 / GIB
    path = write(tmp_path, config(zoo, storage={"dtype": "bfloat16", "host_budget_gib": budget}, evaluator=one))
    result = CliRunner().invoke(cli, ["plan", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "storage: {dtype: bfloat16, placement: disk} fits" in result.output.splitlines()[-1]
    moved = write(tmp_path, config(zoo, storage={"dtype": "bfloat16", "host_budget_gib": budget,
                                                 "placement": "disk"}, evaluator=one))
    result = CliRunner().invoke(cli, ["plan", str(moved), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert f"disk: files in {tmp_path / 'run'}, read back" in result.output and "GiB is free there" in result.output
    assert result.output.rstrip().endswith("fits")


@pytest.mark.skipif(memory_filesystem("/dev/shm") is None, reason="no RAM-backed /dev/shm here")
def test_disk_placement_in_a_ram_backed_folder_is_planned_as_memory(tmp_path, zoo):
    """`disk` placement in a tmpfs folder keeps the weights in RAM: the plan counts them there,
    refuses a budget they do not fit in, and does not offer `disk` as the way out."""
    base, fts = zoo
    one = {"kind": "local", "batch_size": 1}
    ram = tempfile.mkdtemp(prefix="evo-merge-test-", dir="/dev/shm")
    try:
        storage = {"dtype": "bfloat16", "placement": "disk"}
        on_disk, in_ram = (campaign_plan(Campaign.model_validate(config(
            zoo, storage={**storage, "disk_dir": folder}, evaluator=one)), base, fts)
            for folder in (str(tmp_path), ram))
        assert in_ram.disk_in_memory == "tmpfs" and on_disk.disk_in_memory is None
        assert in_ram.need_host == on_disk.need_host + on_disk.need_disk
        budget = (on_disk.need_host + in_ram.need_host) / 2 / GIB
        path = write(tmp_path, config(zoo, storage={**storage, "disk_dir": ram, "host_budget_gib": budget},
                                      evaluator=one))
        result = CliRunner().invoke(cli, ["plan", str(path), "--out", str(tmp_path / "run")])
        assert result.exit_code == 2
        assert f"which {ram} keeps in memory (tmpfs)" in result.output and "a tmpfs folder" in result.output
        # a `host` campaign over its budget, where `disk` on a disk would fit: not offered in the RAM folder
        in_host = campaign_plan(Campaign.model_validate(config(
            zoo, storage={"dtype": "bfloat16", "placement": "host"}, evaluator=one)), base, fts)
        budget = (on_disk.need_host + in_host.need_host) / 2 / GIB
        host = write(tmp_path, config(zoo, storage={"dtype": "bfloat16", "placement": "host", "disk_dir": ram,
                                                    "host_budget_gib": budget}, evaluator=one))
        result = CliRunner().invoke(cli, ["plan", str(host), "--out", str(tmp_path / "run")])
        assert result.exit_code == 2 and "placement: disk} fits" not in result.output
    finally:
        shutil.rmtree(ram)


def test_an_out_of_memory_error_fails_the_candidate_only(zoo):
    from evo_merge.search.candidate import Candidate
    from evo_merge.search.evaluator import CandidateFailed
    from evo_merge.search.local import LocalEvaluator
    from evo_merge.search.workbench import Workbench

    @register_method("test_host_oom", replace=True)
    def host_oom(base, deltas, weights, params, name):
        """Runs out of host memory."""
        raise MemoryError("simulated")

    @register_method("test_device_oom_merge", replace=True)
    def device_oom(base, deltas, weights, params, name):
        """Runs out of GPU memory (torch.cuda.OutOfMemoryError is this class)."""
        raise torch.OutOfMemoryError("simulated")

    class HungryTask(AgreementTask):
        def evaluate(self, model, tokenizer, item_ids=None):
            if len(item_ids) > 2:  # a batch too large for the memory left
                raise MemoryError("simulated")
            return super().evaluate(model, tokenizer, item_ids)

    base, fts = zoo
    task = HungryTask(str(fts[0]), n_items=4)
    bench = Workbench.open(base, fts, device="cpu", storage=Storage.parse("bfloat16", "host"))
    evaluator = LocalEvaluator(bench, {"agree": task})
    some, many = {"agree": task.item_ids[:2]}, {"agree": task.item_ids}
    jobs = [(Candidate("test_host_oom", (1.0, 1.0), ()), some), (Candidate("task_arithmetic", (1.0, 0.0), ()), many),
            (Candidate("task_arithmetic", (1.0, 0.0), ()), some),
            (Candidate("test_device_oom_merge", (1.0, 1.0), ()), some)]
    outcomes = [outcome for _, outcome, _ in evaluator.evaluate_many(jobs)]
    assert isinstance(outcomes[3], CandidateFailed) and str(outcomes[3]).startswith("out of memory while merging")
    assert isinstance(outcomes[0], CandidateFailed) and "MemoryError" in str(outcomes[0])
    assert isinstance(outcomes[1], CandidateFailed)
    assert str(outcomes[1]).startswith("out of memory while evaluating") and "evaluator.batch_size" in str(outcomes[1])
    assert set(outcomes[2]["agree"]) == set(task.item_ids[:2])


def test_the_evaluator_mass_and_dask_workers_get_the_storage_settings(tmp_path):
    pytest.importorskip("distributed")
    from evo_merge.search.distributed import DaskEvaluator
    from evo_merge.search.mass_kind import MASS_KIND

    base, fts = zoo = save_tiny_family(tmp_path, "llama", n_finetunes=2)  # close enough to the base for MASS
    campaign = Campaign.model_validate(config(zoo, storage={"dtype": "bfloat16", "placement": "host"},
                                              evaluator={"kind": "dask", "n_workers": 1}))
    dask = DaskEvaluator.from_campaign(campaign, base, fts)
    assert dask.spec.storage == ("bfloat16", "host", None)
    bench = dask.spec.build().bench  # what each worker builds (without starting a cluster)
    assert bench.merger.stash.storage == Storage(torch.bfloat16, "host")
    assert {d.dtype for ds in bench.merger._deltas.values() for d in ds} == {torch.bfloat16}
    factors = MASS_KIND.model(bench).factors
    assert {f.dtype for triplets in factors.lowrank.values() for t in triplets for f in t} == {torch.bfloat16}
    on_disk = Campaign.model_validate(config(zoo, storage={"placement": "disk", "disk_dir": str(tmp_path)},
                                             evaluator={"kind": "dask", "n_workers": 1}))
    spec = DaskEvaluator.from_campaign(on_disk, base, fts).spec
    assert spec.storage == ("auto", "disk", str(tmp_path))
    assert spec.build().bench.merger.stash.storage == Storage(None, "disk", str(tmp_path))  # each worker's own files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("evo-merge-stash")]


def test_the_plan_sizes_activations_by_the_tasks_sequence_length_which_leaves_the_run_identity(zoo):
    """Long prompts (few-shot lm-eval tasks) hold far more logits than the 512 tokens assumed by default."""
    base, fts = zoo
    hf = yaml.safe_load((Path(base) / "config.json").read_text())  # JSON is YAML
    per_token = (2 * hf["vocab_size"] + 24 * hf["hidden_size"]) * 4  # float32 logits twice, 24 floats per unit

    def campaign(**evaluator) -> Campaign:
        return Campaign.model_validate(config(zoo, evaluator={"kind": "local", "batch_size": 8, **evaluator}))

    def activations(plan) -> int:
        line = next(line for line in plan.lines if line.what.startswith("activations"))
        return line.host + line.device

    plain, long = campaign(), campaign(sequence_tokens=4096)
    assert activations(campaign_plan(plain, base, fts)) == 8 * 512 * per_token
    long_plan = campaign_plan(long, base, fts)
    assert activations(long_plan) == 8 * 4096 * per_token
    assert any("8 x 4096 tokens" in line.what for line in long_plan.lines)
    assert config_fingerprint(long) == config_fingerprint(plain)


def bfloat16_copy(folder: Path, out: Path) -> Path:
    """A model folder with its weights stored in bfloat16, as most 1B-8B checkpoints are."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, out)
    weights = {name: t.to(torch.bfloat16) for name, t in load_file(out / "model.safetensors").items()}
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    return out


def test_a_bfloat16_model_is_evaluated_and_exported_in_bfloat16_unless_a_dtype_is_set(tmp_path, zoo):
    """`dtype: auto` (the default): float32 held a 7B module at 28 GB and exported 32 GB picks."""
    from safetensors.torch import load_file

    from evo_merge.search.workbench import Workbench

    base, fts = zoo
    base16, fts16 = bfloat16_copy(base, tmp_path / "base"), [bfloat16_copy(f, tmp_path / f.name) for f in fts]
    assert Workbench.open(base16, fts16, device="cpu").module.dtype == torch.bfloat16
    assert Workbench.open(base16, fts16, device="cpu", dtype="float32").module.dtype == torch.float32
    assert Workbench.open(base, fts, device="cpu").module.dtype == torch.float32  # a float32 model stays so
    data = config((base16, fts16))
    plan = campaign_plan(Campaign.model_validate(data), base16, fts16)
    assert any(line.what == "evaluation module (bfloat16)" for line in plan.lines)
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(write(tmp_path, data)), "--out", str(run)])
    assert result.exit_code == 0, result.output
    pick = next((run / "models").iterdir())
    assert {t.dtype for t in load_file(pick / "model.safetensors").values()} == {torch.bfloat16}
    assert yaml.safe_load((pick / "merge_recipe.yaml").read_text())["out_dtype"] == "bfloat16"


def test_a_run_folder_written_before_dtype_auto_resumes_in_float32(zoo):
    """Defaults version 6 made `dtype: auto` the default: a folder written before ran in float32,
    and binds and resumes so, whether its campaign.yaml spells the dtype out or not."""
    from evo_merge.search.binding import as_written_at

    unset, spelled = Campaign.model_validate(config(zoo)), Campaign.model_validate(config(zoo, dtype="float32"))
    assert unset.dtype == "auto" and as_written_at(unset, 6).dtype == "auto"
    assert as_written_at(unset, 5).dtype == "float32" and as_written_at(spelled, 5).dtype == "float32"
    assert config_fingerprint(spelled, written_at=5) == config_fingerprint(unset, written_at=5)
    assert config_fingerprint(spelled) != config_fingerprint(unset)  # today float32 is a setting of its own


def test_run_into_a_folder_written_before_dtype_auto_plans_what_it_resumes(tmp_path, zoo):
    """`run CAMPAIGN --out OLD` resumes a folder written before `dtype: auto` in float32 even where
    the file leaves the dtype unset: the memory plan must count float32 too, and offer only what a
    resume may change (not a dtype, which would make it another campaign)."""
    from evo_merge.search.binding import CONFIG_DATA_META, CONFIG_META, DEFAULTS_META, fingerprinted
    from evo_merge.search.store import CampaignStore

    base, fts = zoo
    base16, fts16 = bfloat16_copy(base, tmp_path / "base"), [bfloat16_copy(f, tmp_path / f.name) for f in fts]
    one = {"kind": "local", "batch_size": 1}
    need = {dtype: campaign_plan(Campaign.model_validate(config((base16, fts16), dtype=dtype, evaluator=one)),
                                 base16, fts16).need_host for dtype in ("auto", "float32")}
    assert need["auto"] < need["float32"]
    budget = {"host_budget_gib": (need["auto"] + need["float32"]) / 2 / GIB}  # not part of a run's identity
    spelled = config((base16, fts16), dtype="float32", evaluator=one)
    run, spelled_file = tmp_path / "run", write(tmp_path, spelled)
    assert CliRunner().invoke(cli, ["run", str(spelled_file), "--out", str(run)]).exit_code == 0
    store = CampaignStore(run)  # as the run folder a version-5 evo-merge wrote: float32 was the default
    old = Campaign.load(spelled_file)
    store.set_metas({DEFAULTS_META: 5, CONFIG_META: config_fingerprint(old, written_at=5),
                     CONFIG_DATA_META: fingerprinted(old, written_at=5)})
    store.close()

    unset = write(tmp_path, config((base16, fts16), evaluator=one, storage=budget))
    result = CliRunner().invoke(cli, ["run", str(unset), "--out", str(run)])
    assert result.exit_code == 2, result.output
    error = result.output.strip().splitlines()[-1]
    # the placement, which a resume may change, and not the dtypes
    assert "memory plan" in error and "; storage: {dtype: auto, placement: disk} fits (host " in error
    assert error.endswith(f"(details: evo-merge plan {unset} --out {run})")
    detailed = CliRunner().invoke(cli, ["plan", str(unset), "--out", str(run)])  # the plan the error points to
    assert detailed.exit_code == 2 and "evaluation module (float32)" in detailed.output
    assert "storage: {dtype: auto, placement: disk} fits" in detailed.output.strip().splitlines()[-1]
    new_folder = CliRunner().invoke(cli, ["plan", str(unset)])
    assert new_folder.exit_code == 0 and "evaluation module (bfloat16)" in new_folder.output
    roomy = write(tmp_path, config((base16, fts16), evaluator=one))
    assert CliRunner().invoke(cli, ["run", str(roomy), "--out", str(run)]).exit_code == 0  # the same campaign
    fresh = CliRunner().invoke(cli, ["run", str(unset), "--out", str(tmp_path / "new")])
    assert fresh.exit_code == 0, fresh.output  # a new folder runs in bfloat16, which fits


def test_an_export_on_another_device_than_the_run_evaluated_on_says_so(tmp_path, zoo, caplog, monkeypatch):
    """`device: auto` on a GPU machine, the run folder exported later on a laptop: the export merges
    on the CPU, which equals the GPU to rounding but draws DARE's and DELLA's drops otherwise."""
    import logging

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # `auto` is the CPU here, on any machine

    from evo_merge.config import Campaign
    from evo_merge.search.campaign import CampaignRunner
    from evo_merge.search.store import EVALUATED_ON_META, CampaignStore

    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(write(tmp_path, config(zoo, device="auto"))), "--out", str(run)])
    assert result.exit_code == 0, result.output
    store = CampaignStore(run)
    assert store.get_meta(EVALUATED_ON_META) == ["cpu"]
    eid = next(e.id for e in store.evaluations("search") if e.measured is not None)  # measured: no evaluator made
    args = ["export", str(run), "--pick", str(eid), "--out"]
    caplog.clear()  # what the run said
    with caplog.at_level(logging.WARNING, logger="evo_merge.search"):
        assert CliRunner().invoke(cli, [*args, str(tmp_path / "same")]).exit_code == 0
        assert not caplog.records  # evaluated and exported on the CPU
        store.db.execute("DELETE FROM meta WHERE key = ?", (EVALUATED_ON_META.key,))  # a folder from before
        assert CliRunner().invoke(cli, [*args, str(tmp_path / "unknown")]).exit_code == 0
        assert not caplog.records  # `auto`, nothing recorded: no device to compare with
        store.set_meta(EVALUATED_ON_META, "cuda")  # as a GPU machine's run recorded it before (one name)
        assert CliRunner().invoke(cli, [*args, str(tmp_path / "elsewhere")]).exit_code == 0
        store.set_meta(EVALUATED_ON_META, ["cpu", "cuda"])  # a cluster of both, or a resume on the other
        assert CliRunner().invoke(cli, [*args, str(tmp_path / "mixed")]).exit_code == 0
        store.set_meta(EVALUATED_ON_META, ["cuda"])  # the run on a GPU, resumed here: its evaluator made on the CPU
        runner = CampaignRunner.open(Campaign.load(run / "campaign.yaml"), run, run)
        runner.evaluator()
        runner.close()
        assert store.get_meta(EVALUATED_ON_META) == ["cpu", "cuda"]
    store.close()
    assert [r.getMessage() for r in caplog.records] == [
        "the run evaluated on cuda, this export merges on cpu: equal to rounding, but DARE and DELLA draw other "
        "drops than the candidate scored",
        "the run evaluated on cpu and cuda, this export merges on cpu: equal to rounding, but DARE and DELLA draw "
        "other drops than the candidate scored",
        "this run built its candidates on cuda, and now builds them on cpu too (a resume, or an export measuring a "
        "pick): DARE and DELLA candidates draw other drops on each, and a pick is exported as the device of the "
        "export draws it"]


def test_scores_measured_on_narrower_stored_task_vectors_say_so_in_the_report_and_the_cards(tmp_path, zoo):
    """bf16 storage chosen for float32 checkpoints rounds every task vector once, while a pick's
    export is the merge of its recipe: a card's measured scores were presented as the exported
    weights' own, which can answer some items differently."""
    said = ("were measured on merges of task vectors stored in bfloat16, each rounded once (a `storage.dtype` "
            "narrower than the checkpoints'")
    for name, storage in (("bf16", {"dtype": "bfloat16"}), ("fp32", {})):
        folder = tmp_path / name
        folder.mkdir()
        run = folder / "run"
        result = CliRunner().invoke(cli, ["run", str(write(folder, config(zoo, storage=storage))), "--out", str(run)])
        assert result.exit_code == 0, result.output
        cards = [p / "README.md" for p in (run / "models").iterdir()]
        assert cards and (run / "report.md").is_file()
        if name == "bf16":
            assert f"scores of task_arithmetic, tsv candidates {said}" in (run / "report.md").read_text()
            assert all(f"Scores {said}" in card.read_text() for card in cards)
        else:  # the tiny family is float32: auto stores float32, and the picks are what was scored
            assert "stored in" not in (run / "report.md").read_text()
            assert not any("stored in" in card.read_text() for card in cards)


@pytest.fixture(scope="module")
def bf16_zoo(zoo, tmp_path_factory):
    return bf16_copies(*zoo, tmp_path_factory.mktemp("bf16_zoo"))


def test_a_bfloat16_campaign_scores_the_very_weights_its_picks_export(tmp_path, bf16_zoo):
    """`auto` storage over bf16 checkpoints keeps each task vector as its endpoint (exact), so the
    candidate scored is the pick exported, bit for bit, and no card or report line says otherwise.
    With the task vectors rounded to bf16 a 52M family's cards said 0.93 / 0.89 / 0.92 where the
    exported weights score 0.92 / 0.88 / 0.90."""
    from safetensors.torch import load_file

    from evo_merge.search.candidate import Candidate
    from evo_merge.search.store import EXPORTED_META, FACTS_META, CampaignStore
    from evo_merge.search.workbench import Workbench

    methods = {"task_arithmetic": {}, "ties": {"density": [0.2, 0.9]}}
    run = tmp_path / "run"
    path = write(tmp_path, config(bf16_zoo, methods=methods))
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(run)])
    assert result.exit_code == 0, result.output
    store = CampaignStore(run)
    facts, exported = store.get_meta(FACTS_META), store.get_meta(EXPORTED_META)
    keys = {evaluation.id: evaluation.key for evaluation in store.evaluations()}
    store.close()
    assert exported and facts["stored_dtype"] == "bfloat16" and facts["rounded_methods"] == []
    assert "stored in" not in (run / "report.md").read_text()
    bench = Workbench.open(*bf16_zoo, device="cpu")
    assert bench.module.dtype == torch.bfloat16
    for evaluation_id, folder in exported.values():
        assert "stored in" not in (run / folder / "README.md").read_text()
        candidate = Candidate.from_key(keys[evaluation_id])
        state = bench.merger.apply(candidate.method, candidate.weights, dict(candidate.params)).state_dict()
        written = load_file(run / folder / "model.safetensors")
        assert written and all(torch.equal(state[name], tensor) for name, tensor in written.items()), folder


def test_the_methods_a_storage_rounds_are_named_from_the_checkpoints(tmp_path, zoo, bf16_zoo):
    """Which candidates differ from their recipes' merges: every method's where a narrower dtype
    is chosen for wider checkpoints or an endpoint is a LoRA adapter's sum, TSV's alone (its factors)
    over bf16 checkpoints kept in bf16, none in float32; MASS's where its folder keeps its base and
    factors in another dtype than the search did. A card says so for its own method only."""
    from evo_merge.search.kinds import rounded_storage_note
    from evo_merge.search.workspace import Workspace

    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    lora = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(AutoModelForCausalLM.from_pretrained(bf16_zoo[1][1]), lora).save_pretrained(tmp_path / "lora")
    adapted = (bf16_zoo[0], [bf16_zoo[1][0], f"{bf16_zoo[1][1]}+{tmp_path / 'lora'}"])  # its sum: float32 only
    both = ["task_arithmetic", "tsv"]
    mass = {"task_arithmetic": {}, "tsv": {}, "mass": {}}  # MASS: where its folder keeps otherwise than the search
    cases = [(zoo, {"dtype": "bfloat16"}, (True, [*both, "mass"])), (zoo, {}, (False, [])),
             (bf16_zoo, {}, (False, ["tsv"])), (bf16_zoo, {"dtype": "float32"}, (False, ["mass"])),
             (adapted, {}, (True, both)), (adapted, {"dtype": "float32"}, (False, []))]
    for i, (family, storage, (task_vectors, methods)) in enumerate(cases):
        spec = Campaign.model_validate(config(family, storage=storage, methods=mass if family != adapted else
                                              {m: {} for m in both}))
        workspace = Workspace.open(spec, tmp_path, tmp_path / f"{i}")
        try:
            assert workspace.storage_rounding() == {"rounded_task_vectors": task_vectors,
                                                    "rounded_methods": methods}, (i, storage)
        finally:
            workspace.store.close()
    from evo_merge.merge.storage import Keeping
    from evo_merge.search.kinds import candidate_kind

    # each kind answers for its own: a static merge as its pieces are kept, MASS as its folder keeps them
    bf16, as_bf16, f32 = Keeping(torch.bfloat16, True, True), Keeping(torch.bfloat16, True, False), Keeping(
        torch.float32, True, True)
    assert [candidate_kind(m).rounds(m, bf16) for m in ("mass", "tsv", "ties")] == [False, True, False]
    assert [candidate_kind(m).rounds(m, as_bf16) for m in ("mass", "tsv", "ties")] == [True, True, False]
    assert not any(candidate_kind(m).rounds(m, f32) for m in ("mass", "tsv", "ties"))
    assert all(candidate_kind(m).rounds(m, Keeping(torch.float32, False, True)) for m in ("tsv", "ties"))
    facts = {"stored_dtype": "bfloat16", "rounded_methods": ["tsv"], "rounded_task_vectors": False}
    assert rounded_storage_note(facts, "task_arithmetic") is None
    assert rounded_storage_note(facts).startswith("scores of tsv candidates were measured on merges of factors the "
                                                  "method computes (TSV's), stored in bfloat16")
    # float32 storage over bf16 checkpoints: only MASS's folder differs, and the advice is `auto`, not float32
    mass_facts = {"stored_dtype": "float32", "rounded_methods": ["mass"], "rounded_task_vectors": False}
    assert rounded_storage_note(mass_facts, "tsv") is None
    for note, scores in ((rounded_storage_note(mass_facts), "scores of mass candidates"),
                         (rounded_storage_note(mass_facts, "mass"), "scores")):  # the report's, a card's
        assert note.startswith(f"{scores} were measured with the base and the factors kept in float32")
        assert "`storage.dtype: auto` keeps them as the folder does" in note and "float32` measures" not in note
    # both kinds rounding: a line each, each naming its methods
    both_kinds = {"stored_dtype": "bfloat16", "rounded_methods": ["tsv", "mass", "tsv_c"],
                  "rounded_task_vectors": False}
    first, second = rounded_storage_note(both_kinds).split("; scores of ")
    assert first.startswith("scores of tsv, tsv_c candidates were measured on merges of factors")
    assert second.startswith("mass candidates were measured with the base")
    assert rounded_storage_note(facts, "tsv").startswith("scores were measured on merges of factors")
    assert rounded_storage_note({**facts, "rounded_methods": []}) is None
    # the cause named: the task vectors themselves, as a LoRA endpoint or a narrower storage dtype rounds them,
    # and as every run from before the cause was recorded did
    for rounded in ({**facts, "rounded_methods": both, "rounded_task_vectors": True}, {"stored_dtype": "bfloat16"}):
        assert rounded_storage_note(rounded, "task_arithmetic").startswith(
            "scores were measured on merges of task vectors stored in bfloat16, each rounded once")
        assert "an endpoint that is a LoRA adapter's sum" in rounded_storage_note(rounded, "task_arithmetic")


def test_plan_refuses_a_disk_dir_run_would_refuse(tmp_path, zoo):
    """A missing folder or a file: `plan` said "fits" (exit 0) and `run` refused; /proc: `plan` said
    nothing fits and offered `disk` placement, the setting that failed, as the way out."""
    (tmp_path / "file").write_text("not a folder")
    cases = {str(tmp_path / "missing"): "is not found", str(tmp_path / "file"): "is a file",
             "/proc/sys": "cannot write a file in /proc/sys"}
    for disk_dir, expected in cases.items():
        path = write(tmp_path, config(zoo, storage={"placement": "disk", "disk_dir": disk_dir}))
        for args in (["plan", str(path)], ["run", str(path), "--out", str(tmp_path / "run")]):
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 2 and "storage.disk_dir: " in result.output and expected in result.output, (
                result.output)
            assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_a_run_begun_before_the_rounded_methods_were_recorded_keeps_saying_it_rounded(tmp_path, bf16_zoo):
    """An older version kept every task vector of bf16 checkpoints rounded: its scores stay noted
    as measured on that rounding when the run is resumed by this one, which rounds only TSV's."""
    from evo_merge.search.kinds import rounded_storage_note
    from evo_merge.search.store import FACTS_META
    from evo_merge.search.workspace import Workspace, record_facts

    def facts_after_open(edit=None):
        workspace = Workspace.open(Campaign.model_validate(config(bf16_zoo)), tmp_path, tmp_path / "run")
        try:
            if edit is not None:
                edit(workspace.store)
            record_facts(workspace.store, workspace.campaign, {"agree0": 40, "agree1": 40},
                         workspace.stored_dtype_name(), workspace.storage_rounding())
            return workspace.store.get_meta(FACTS_META)
        finally:
            workspace.store.close()

    facts = facts_after_open()
    assert facts["rounded_methods"] == ["tsv"] and facts["rounded_task_vectors"] is False

    def as_an_older_version_wrote(store):
        older = store.get_meta(FACTS_META)
        del older["rounded_methods"], older["rounded_task_vectors"]
        store.set_meta(FACTS_META, older)

    resumed = facts_after_open(as_an_older_version_wrote)
    assert "rounded_methods" not in resumed and "rounded_task_vectors" not in resumed
    assert rounded_storage_note(resumed, "task_arithmetic").startswith("scores were measured on merges of task vectors")


@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])
def test_the_evaluation_module_is_the_model_transformers_loads_in_that_dtype(tmp_path, dtype):
    """Scores are measured on the module a user of the pick gets from `from_pretrained(dtype=...)`:
    it keeps RoPE's inv_freq in float32. Cast after loading (`.to(dtype)`), the search's module
    had it in bf16, and a 52M pick measured 0.89 / 0.90 / 0.94 on its card where the same weights
    loaded by transformers score 0.92 / 0.88 / 0.90."""
    from transformers import AutoModelForCausalLM

    from evo_merge.search.mass_kind import MassKind
    from evo_merge.search.workbench import Workbench

    family = save_tiny_family(tmp_path / "f32", "llama", n_finetunes=2)  # close fine-tunes, as MASS wants
    if dtype == "auto":  # bf16 either way: its own, or chosen for float32 weights
        family = bf16_copies(*family, tmp_path / "bf16")
    bench = Workbench.open(*family, device="cpu", dtype=dtype)
    theirs = AutoModelForCausalLM.from_pretrained(family[0], dtype=torch.bfloat16)
    assert bench.dtype == torch.bfloat16 and {p.dtype for p in bench.module.parameters()} == {torch.bfloat16}
    buffers = dict(theirs.named_buffers())
    assert any(b.dtype == torch.float32 for b in buffers.values())  # the case: transformers keeps some in float32
    for module in (bench.module, MassKind().model(bench).module):
        ours = dict(module.named_buffers())
        assert ours.keys() == buffers.keys()
        assert all(ours[k].dtype == b.dtype and torch.equal(ours[k], b) for k, b in buffers.items())


def test_the_plan_counts_one_dask_worker_for_a_gpu_named_by_index(monkeypatch):
    """A local dask cluster with `device: cuda:1` pins one worker to that GPU; the plan counted one
    per GPU of the machine (up to n_workers), doubling the host need. Checked without a GPU: the
    machine's GPUs and their memory stand in."""
    from evo_merge.config import Campaign
    from evo_merge.search import capacity

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * GIB, 80 * GIB))
    monkeypatch.setattr(capacity, "resolve_device", lambda name: torch.device(name if ":" in name else "cuda"))
    spec = {"base_model": "b", "models": ["m"], "tasks": [{"task": "arith"}],
            "evaluator": {"kind": "dask", "n_workers": 3}}
    assert capacity.target_of(Campaign.model_validate({**spec, "device": "cuda:1"})).workers == 1
    assert capacity.target_of(Campaign.model_validate({**spec, "device": "cuda"})).workers == 3


def test_a_remote_cluster_s_memory_and_disk_folder_are_not_this_machine_s(tmp_path, zoo, monkeypatch):
    """A campaign evaluated on a running cluster's machines: this one's memory (1 MiB free here) and
    a `disk_dir` that lies on the workers are not checked here, where the same campaign evaluated
    in this process is refused for both (audit 104)."""
    from evo_merge.errors import UserError
    from evo_merge.merge.host import AVAILABLE
    from evo_merge.search.preflight import check_campaign_fits

    monkeypatch.setattr("evo_merge.search.capacity.available_memory", lambda: (2**20, AVAILABLE))
    storage = {"placement": "disk", "disk_dir": str(tmp_path / "on-the-workers")}
    remote = write(tmp_path, config(zoo, storage=storage, evaluator={"kind": "dask", "address": "tcp://head:8786"}))
    check_campaign_fits(remote, tmp_path / "run")
    from click.testing import CliRunner

    from evo_merge.cli import cli

    planned = CliRunner().invoke(cli, ["plan", str(remote)])  # it said "host: unknown is available", then "fits"
    assert planned.exit_code == 0, planned.output
    assert planned.output.rstrip().endswith("limit: not checked: the machines that evaluate are a remote cluster's, "
                                            "not this one"), planned.output
    assert "fits" not in planned.output.splitlines()
    local = tmp_path / "local"
    local.mkdir()
    with pytest.raises(UserError, match="on-the-workers"):  # the folder, before the memory
        check_campaign_fits(write(local, config(zoo, storage=storage)), tmp_path / "run")
    with pytest.raises(UserError, match="evo-merge plan"):
        check_campaign_fits(write(local, config(zoo)), tmp_path / "run")


def test_the_campaign_s_dtype_and_storage_reach_the_evaluator(zoo):
    """What `make_evaluator` builds from a campaign: the evaluation module in the campaign's dtype
    (a bfloat16 campaign evaluated in float32 took twice the memory and scored other weights than
    its picks), on its device, with its storage (audit 104)."""
    from evo_merge.search.evaluators import make_evaluator

    campaign = Campaign.model_validate(config(zoo, dtype="bfloat16", storage={"dtype": "bfloat16"}))
    evaluator = make_evaluator(campaign, zoo[0], zoo[1])
    bench = evaluator.workbench()
    assert bench.dtype == torch.bfloat16 and {p.dtype for p in bench.module.parameters()} == {torch.bfloat16}
    assert bench.device.type == "cpu" and bench.storage == Storage.of(campaign.storage)
    assert list(evaluator.tasks) == ["agree0", "agree1"]
