"""The pretrain stage on a Ray Train worker group.

- ``driver.run``: the stage's run function — resolves the inputs into a ``PretrainJob``,
  launches the ``TorchTrainer``, publishes the final files.
- ``worker.train_worker``: what every worker runs — loader → method → optimizer → loop →
  checkpoint. It knows no method by name (``ssl_ops.method``).
- ``batches``, ``monitor``, ``checkpoint``: the loop's parts (device transfer and timing,
  online monitoring and guards, what a checkpoint holds).
"""
