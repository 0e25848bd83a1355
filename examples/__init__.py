"""Runnable recipes for ccm_async, each run by the test suite."""
