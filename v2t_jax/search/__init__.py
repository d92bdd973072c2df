"""The search: from a target embedding to the text, through the inverter's hypothesis and the corrector's steps.

strategies   the `Search` value (steps, sequence and token beams, prior, stopping) and its flags
decoding     greedy and beam decoding of one model's tokens, as pure functions
core         the pieces of a correction step (candidates, re-embedding, selection) on `SearchState`
drivers      one batch as one compiled program, a queue through slots (continuous batching), through text
sharded      the drivers over a device mesh, and the choice among them for a `Search`
hotflip      gradient-guided token swaps on a finished hypothesis (`polish`)
"""
