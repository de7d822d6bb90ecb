"""The stand-in is a script tree run by tests/test_kohya_*.py, not test modules: keep pytest out."""

collect_ignore_glob = ["*.py"]
