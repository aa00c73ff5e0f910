"""Training: SFT and GRPO-ATS on TRL, with the reference's loss masks.

Rooms: `masks` (which tokens carry loss: a pure function), `collate` (samples -> a padded batch for a
Qwen2.5-VL-family processor), `config` (the typed SFT config), `sft` (the run on TRL's `SFTTrainer`),
`aux` (the optional per-patch vision loss). Importing this package needs neither torch nor TRL.
"""
