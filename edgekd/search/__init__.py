"""Recipes that compile several candidates and ship one: ``--precision auto`` (precision.py) and
``--latency-budget`` (budget.py). Each candidate is a full ``api.compile`` into a temporary folder;
its latency comes from the chosen device (timing.py); the winner becomes the artifact in one atomic
step (finish.py), its manifest and report carrying the table of what was tried."""
