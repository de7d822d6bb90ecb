"""The stand-in package and the real-SimpleTuner wrapper are used by the tests, not collected as tests."""

collect_ignore = ["simpletuner", "run_real_simpletuner.py"]
