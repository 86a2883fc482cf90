"""The retrain loop: its rules and its outcome, apart from Prefect."""
