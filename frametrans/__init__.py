"""frametrans: run images, folders, videos and raw frame streams through image-to-image generators.

The top-level import is cheap (no torch); the heavy parts are imported where they are used.
"""

__version__ = "0.1.0"
