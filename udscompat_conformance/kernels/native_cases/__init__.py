"""Conformance cases that observe NetBSD through its own ABI (a rump kernel); see conftest.py."""
