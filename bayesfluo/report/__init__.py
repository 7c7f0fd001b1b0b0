"""Reports and figures: the HTML report (:mod:`~bayesfluo.report.html`), maps and
diagnostic plots."""
