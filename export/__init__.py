"""Bulk export: detection over whole images or large areas, swept in grid cells on Dask."""
