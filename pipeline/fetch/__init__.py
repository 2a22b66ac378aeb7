"""The fetch stage, one module per job (no imports here: importing one module must not pull in the stage).

- ``stage``: :func:`~pipeline.fetch.stage.fetch_region`, the stage entry: writes ``source/`` atomically
  with provenance.json
- ``params``: :class:`~pipeline.fetch.params.FetchParams`, the ``fetch`` section of params.yaml
- ``stacio``: transport: local/file/http(s)/anonymous-S3 reads with retries, href arithmetic and
  safety, pystac's StacIO
- ``cache``: the download cache (checked, atomic, hardlinked out) and the walk cache of remote catalogs
- ``walk``: the parallel, deterministic static-catalog walk and its pruning policy
- ``items``: item selection (pure): item facts, filters, ranking, asset choice
- ``geotiff``: checks that a downloaded GeoTIFF is usable; the EO conversion to uint8 RGB
- ``sar``: the SAR product: static catalog, STAC API search or a file
- ``eo``: the EO image: XYZ/TMS tiles, a STAC item/catalog or a file
- ``osm``: the OSM input: an extract or an Overpass answer saved as OSM XML
"""
