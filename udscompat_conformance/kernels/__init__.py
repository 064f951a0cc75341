"""Kernels that cannot boot here, run by the conformance suite: NetBSD as a rump kernel, gVisor."""
