"""Stage 3: PET, loss terms, schedules, the training loop, presets, memory estimate."""
