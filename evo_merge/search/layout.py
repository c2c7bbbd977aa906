"""What a run folder holds, by name: one table that the runner, the exporter, the run-folder
checks, `status`, `report` and the trackers all read, so that a renamed entry cannot leave one of
them looking in the old place. The database (`CampaignStore.DB`) and the lock file
(`lock.LOCK_FILE`) are named by the modules that own them."""

CAMPAIGN_FILE = "campaign.yaml"  # the campaign as resolved; a resume checks it against the store
IRT_FOLDER = "irt"  # irt/<task>/: each task's IRT model and anchors, fitted on the calibration subjects
ALIGNED_FOLDER = "aligned"  # the endpoints aligned before the search (`align`)
MODELS_FOLDER = "models"  # models/<pick>/: the exported picks

# written by `report` (and at the end of `run`), from the store
EVALUATIONS_CSV = "evaluations.csv"
PARETO_CSV = "pareto.csv"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PARETO_PNG = "pareto.png"
PROGRESS_PNG = "progress.png"

