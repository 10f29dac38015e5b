"""The paper's analysis: run summaries in, the paper's tables, paired verdicts and plots out.

Not part of the installed ``sparse_adapter`` library (it reads what ``train.py`` writes and needs scipy and
matplotlib); it runs from the checkout: ``python -m paper.report results/claims/grid --out report/``.
The paper's rows, published numbers, tables and claims are data (``paper/data/*.yaml``), not code.
"""
