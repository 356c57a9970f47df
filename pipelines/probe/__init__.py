"""The probe stage's run: frozen-backbone features extracted by Ray tasks into feature files, and
the linear and kNN classifiers on them."""
