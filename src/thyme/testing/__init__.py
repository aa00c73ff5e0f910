"""Test and smoke-run helpers built on the whole stack: a tiny model taught fixed trajectories by heart.

They sit above the agent loop, the trainer's collator and the model factory (`thyme.models`), which stays a
leaf that imports none of them. Rooms: `scripted` (the scripts and `build_scripted`), `memorize` (the
training loop that teaches them).
"""
