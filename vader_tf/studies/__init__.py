"""The small-scale study harnesses behind RESULTS.md (`experiments/reproduce_small.py`,
`tune_small.py`, `speed_quality.py`, `compute_curve.py` are their absl scripts).

- `small_study`: VADeR vs MoCo v2 vs random init over seeds, the report and its goal check,
  and the shared runner the other harnesses reuse (`VariantsConfig`,
  `pretrain_and_summarize`, `Evaluations`, `evaluate_encoders`, `aggregate`).
- `tuning_study`: the study's VADeR run with one setting changed, on the tuning sets.
- `speed_quality_study`: float32 vs bfloat16 and one-direction vs symmetric training.
- `compute_curve_study`: VADeR's and MoCo v2's study runs at 1x, 2x, 4x the budget.

Importable (`from vader_tf.studies import small_study`); plotting needs matplotlib (the
`results` extra), imported only when figures are drawn.
"""
