"""Pipeline specs: safe YAML that remembers positions, composition (``extends``, ``${VAR}``,
``--set``), validation into a ``PipelineSpec``, and the settings reference."""
