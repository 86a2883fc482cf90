"""The data stage: validate, prepare (split + quality report + review sample), version with DVC."""
