"""Training the inverter and the corrector.

train           the loop: data, optimizer, steps, evaluation, time boxes, preemption, resuming
tasks           what differs between an inverter and a corrector (`Task`), built once from a config
warm_start      how a run's parameters start: a pretrained T5, the embedder's layers, the inverter's bundle
checkpoint      orbax checkpoints of a run (local folders and gs:// alike)
sharding        the training mesh across hosts, and the parameters' partitioning
config_loading  reading `configs/*.py:VARIANT` with --config.KEY=VALUE overrides
"""
