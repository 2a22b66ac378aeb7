"""Publish the dataset: a GeoParquet patch index, statistics with plots, and a STAC collection.

Modules (import the one you need; this file imports nothing):

- ``params``: ``PublishParams``, the params.yaml ``publish`` section (collection id, licences, bins).
- ``index``: reading the stores' metadata (never the image arrays) and legend; the patch table.
- ``stats``: dataset statistics (patches per region/split/urban-rural, classes, time gaps, area) and plots.
- ``stac``: the STAC collection and its items; ``check_stac`` reads them back offline.
- ``stage``: ``publish``, the stage entry writing the dataset files and the STAC folder atomically.
"""
