"""Kernels: the local store, the catalog, verified pulls and imports of distro kernels."""
