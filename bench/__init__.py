"""``make bench``: every performance claim of the README, measured side by side with its
reference in one run on this machine, printed as one table and written as JSON under
``bench/results/``.

Run it with ``python -m bench`` (``--quick`` for a small smoke run) from the repository root;
``python -m bench.coldstart`` runs the cold starts alone. Bench-only dependencies (the official
Alipay SDK) are in ``requirements/bench.txt``.
"""
