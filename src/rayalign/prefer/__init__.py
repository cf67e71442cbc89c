"""Preference stages: `reference` (reference log-probs once), `prefer` (preference optimisation),
`reward` (Bradley–Terry reward model) and `score` (rewards for every row)."""
