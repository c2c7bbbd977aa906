"""Reports: model cards, campaign reports, plots."""
