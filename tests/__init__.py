"""tiledetect test suite."""
