"""From datasets to cheaper models: curation (judge, filter, review); generation and training come later."""
