"""Land-cover labels from OpenStreetMap (no imports here: each module is imported on its own).

- ``params``: ``LabelsParams``, the ``labels`` section of params.yaml.
- ``classify``: OSM rows -> classified polygons (legend tag rules, buffered lines, open sea).
- ``coast``: open sea polygons from natural=coastline ways (pure geometry).
- ``rasterize``: burn classified polygons onto any grid, block by block, in priority order.
- ``urban``: the urban/rural verdict of a region, on vector polygons in an equal-area CRS.
- ``stage``: the labels stage, ``label_region``: labels.tif, zones.tif, labels.json, labels.png.
"""
