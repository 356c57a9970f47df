"""Running a spec: the runner, the workdir's store and lock, preflight checks, the files each stage
publishes, Ray's lifecycle, stop signals, and the HTML report."""
