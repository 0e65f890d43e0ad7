"""Raster I/O: validating sources, writing Cloud-Optimized GeoTIFFs, describing them, tile grids.

Everything that opens a raster lives here, so serving, training and export read the same pixels.
"""
