"""Analysis of finished runs: their histories, plots, diagnostics and the baseline-vs-final table.

- `history`: reading a run's per-epoch metrics; best epoch, steps of the rate, bands;
- `reports`: history plots, best-performance text, confusion matrix, reliability diagram;
- `diagnostics`: the measured analysis logged with every run;
- `compare`: runs -> the baseline-vs-final table (`fer compare`).
"""
