"""Trained models: what pretrain publishes and reading it back, the export stage's run, the model
registry, and finding a published backbone."""
