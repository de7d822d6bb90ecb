"""Stand-ins are scripts run by the tests, not test modules: keep pytest's doctest collection out.

Importing the torchvision shim in the test process would make `torchvision` importable for every
later test; it is only ever put on `PYTHONPATH` of a subprocess.
"""

collect_ignore = ["torchvision_shim", "train_dreambooth_lora_flux_standin.py", "run_with_torchvision_shim.py"]
