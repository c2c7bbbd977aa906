"""The example campaign `init` writes and `demo` runs: valid as written, and its evaluation batch
size is the one a campaign, and `eval`, use when none is given."""

from evo_merge.cli.eval import eval_
from evo_merge.cli.template import campaign_text
from evo_merge.config import Campaign, EvaluatorSpec


def test_the_template_is_a_valid_campaign_at_the_default_batch_size(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text(campaign_text(tmp_path / "zoo", ["arith", "seq"], name="demo"))
    campaign = Campaign.load(path)
    assert [t.task for t in campaign.tasks] == ["arith", "seq"]
    assert campaign.evaluator.batch_size == EvaluatorSpec().batch_size == 32


def test_eval_scores_at_a_campaigns_default_batch_size():
    option = next(p for p in eval_.params if p.name == "batch_size")
    assert option.default == EvaluatorSpec().batch_size
